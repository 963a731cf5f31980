// gemma compare-weights: how far a weight precision (and the activations the CPU multiplies it by) moves a model's
// next-token distributions from bf16's at f32 activations.
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/model/model_weights.h"
#include "shard/model/quantize.h"
#include "shard/runtime/logits_comparison.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace gemma {
namespace {

// Every position's logits for `ids`, in one prompt step.
absl::StatusOr<std::vector<float>> AllLogits(std::shared_ptr<const Checkpoint> checkpoint,
                                             const WeightLoadOptions& load, const std::vector<int32_t>& ids,
                                             CpuComputeOptions compute = {}, std::string* why = nullptr) {
  auto tp = TensorParallel::Create(checkpoint->config(), 0, 1);
  if (!tp.ok()) return tp.status();
  auto weights = ModelWeights::Load(std::move(checkpoint), *tp, load);
  if (!weights.ok()) return weights.status();
  // What was asked for must suit the weights; what runs is what serving would run here (the f32 kernel where the
  // dot products are missing or slow: the figures are then the weights' alone).
  if (auto s = CheckMatMulActivations(compute.matmul_activations, (*weights)->matrix_format()); !s.ok()) return s;
  compute.matmul_activations = ActivationsThatRun(compute.matmul_activations, why);
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>((ids.size() + kv.block_size - 1) / kv.block_size);
  auto backend = CpuBackend::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), kv, nullptr, compute);
  if (!backend.ok()) return backend.status();
  std::vector<int32_t> blocks(kv.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  SequenceStep step{ids, 0, blocks, LogitsWanted::kAll};
  StepLogits out;
  if (auto s = (*backend)->Forward({&step, 1}, &out); !s.ok()) return s;
  return std::move(out.values);
}

}  // namespace

int CompareWeightsCommand(int argc, char** argv) {
  const char* kCmd = "compare-weights";
  Args args(kCmd,
            "--model DIR --weights bf16|int8|int4|fp8 [--activations f32|bf16|int8] [--int4-group-size G] "
            "[--prompt-ids 2,17,...] [--tokens N] [--json]");
  args.Flag("model", "checkpoint directory (bf16, f16 or f32)")
      .Flag("weights", "the precision to compare with bf16: int8, int4 or fp8 (bf16 with --activations bf16)")
      .Flag("activations", "what that side's weight products multiply on the CPU: f32 (default), bf16 (weights bf16 "
                           "or fp8) or int8 (weights int8 or int4); the bf16 side stays f32")
      .Flag("int4-group-size", "with int4: 32, 64 or 128; 0 (default) picks as the server does (128, or less where a "
                               "matrix needs it)")
      .Flag("prompt-ids", "token ids to run (default: --tokens ids drawn uniformly with seed 1, after <bos>)")
      .Flag("tokens", "positions compared when no ids are given, 2..4096 (default 128)")
      .Flag("json", "print one JSON object", true);
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  if (!args.Has("model")) return Fail(kCmd, absl::InvalidArgumentError("--model DIR is required"));
  const std::string weights = args.Get("weights");
  const std::string activations_name = args.Get("activations", "f32");
  auto activations = ParseMatMulActivations(activations_name);
  if (!activations.ok()) return Fail(kCmd, activations.status());
  auto precision = ParseWeightPrecision(weights);
  if (!precision.ok() || (*precision == WeightPrecision::kBF16 && *activations == MatMulActivations::kF32)) {
    return Fail(kCmd, absl::InvalidArgumentError("--weights \"" + weights +
                                                 "\" is invalid here; allowed: int8, int4, fp8, or bf16 with "
                                                 "--activations bf16"));
  }
  auto group = Int4GroupSizeFlag(args, 0, /*zero_chooses=*/true);
  if (!group.ok()) return Fail(kCmd, group.status());
  WeightLoadOptions load;
  load.precision = *precision;
  load.int4_group_size = static_cast<int>(*group);
  auto opened = Checkpoint::Open(args.Get("model"));
  if (!opened.ok()) return Fail(kCmd, opened.status());
  std::shared_ptr<const Checkpoint> checkpoint(std::move(*opened));
  const ModelConfig& c = checkpoint->config();
  // A pre-quantized checkpoint loads as stored on both sides: it would be compared with itself.
  if (c.quantization.method != CheckpointQuantization::Method::kNone) {
    return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(
                          "--model ", args.Get("model"), " holds ", QuantizationMethodName(c.quantization.method),
                          " weights: compare-weights needs the bf16, f16 or f32 checkpoint they were made from")));
  }
  std::vector<int32_t> ids;
  if (args.Has("prompt-ids")) {
    auto given = args.GetIntList("prompt-ids", 0, c.vocab_size - 1);
    if (!given.ok()) return Fail(kCmd, given.status());
    ids = *given;
  } else {
    auto tokens = args.GetInt("tokens", 128, 2, 4096);
    if (!tokens.ok()) return Fail(kCmd, tokens.status());
    std::mt19937 rng(1);
    std::uniform_int_distribution<int32_t> id(3, c.vocab_size - 1);
    ids.push_back(c.bos_id);
    while (static_cast<int64_t>(ids.size()) < *tokens) ids.push_back(id(rng));
  }
  if (ids.empty() || static_cast<int64_t>(ids.size()) > c.max_position_embeddings) {
    return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(
                          args.Has("prompt-ids") ? "--prompt-ids holds " : "--tokens is ", ids.size(),
                          "; allowed: 1 to the model's context of ", c.max_position_embeddings, " tokens")));
  }
  auto reference = AllLogits(checkpoint, WeightLoadOptions{}, ids);
  if (!reference.ok()) return Fail(kCmd, reference.status());
  CpuComputeOptions compute;
  compute.matmul_activations = *activations;
  std::string why;
  auto other = AllLogits(checkpoint, load, ids, compute, &why);
  if (!other.ok()) return Fail(kCmd, other.status());
  if (!why.empty()) std::fprintf(stderr, "%s\n", why.c_str());
  // The activations the products multiplied: f32 where the requested ones fell back.
  const std::string activations_run = why.empty() ? activations_name : "f32";
  const LogitsComparison q =
      CompareLogits(reference->data(), other->data(), static_cast<int>(ids.size()), c.vocab_size);
  if (args.Has("json")) {
    nlohmann::json j = {{"model", c.DebugString()},
                        {"weights", weights},
                        {"activations", activations_name},
                        {"activations_run", activations_run},
                        {"positions", q.rows},
                        {"mean_kl_vs_bf16", q.mean_kl},
                        {"top1_agreement_vs_bf16", static_cast<double>(q.top1_agreements) / q.rows},
                        {"max_logprob_change_vs_bf16", q.max_logprob_change}};
    if (*precision == WeightPrecision::kInt4) j["int4_group_size"] = load.int4_group_size;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s, %s weights at %s activations against bf16 at f32 over %d positions: mean KL %.4g nats, top-1 "
                "agreement %d/%d, largest log-prob change %.4g\n",
                c.DebugString().c_str(), weights.c_str(), activations_run.c_str(), q.rows, q.mean_kl,
                q.top1_agreements, q.rows, q.max_logprob_change);
  }
  return 0;
}

}  // namespace gemma
