// gemma generate: sample a continuation of a prompt, streaming text or printing one JSON object.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "engine/cache_salt.h"
#include "engine/local_executor.h"
#include "engine/run_batch.h"
#include "nlohmann/json.hpp"
#include "shard/runtime/sampler.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/intervention_flags.h"
#include "tools/local_model.h"

namespace gemma {

int GenerateCommand(int argc, char** argv) {
  const char* kCmd = "generate";
  Args args(kCmd, "[--model DIR] (--prompt TEXT | --prompt-ids 2,17,...) [flags]");
  args.Flag("model", "checkpoint directory (default: the embedded tiny model)")
      .Flag("prompt", "prompt text; <bos> is prepended")
      .Flag("prompt-ids", "prompt token ids, comma-separated, used as given")
      .Flag("max-new-tokens", "tokens to generate, 1..8192 (default 32)")
      .Flag("temperature", "0 = greedy (default 0)")
      .Flag("top-k", "sample from the k most likely tokens; 0 = all (default 0)")
      .Flag("top-p", "nucleus sampling mass in (0, 1] (default 1)")
      .Flag("seed", "random seed (default 0)")
      .Flag("num-beams", "beam search with N beams, 1..10 (default: off); prints the best, --json all of them")
      .Flag("length-penalty", "beam scores are sum(log-probs) / length^P, -10..10 (default 1)")
      .Flag("early-stopping", "beam search ends once N hypotheses have finished", true)
      .Flag("threads", "compute threads; 0 = all cores (default 0)")
      .Flag("tp", "tensor-parallel degree: run a local group of N processes (default 1)")
      .Flag("tp-transport", "collectives of a local group: shm (shared memory, default) or gloo (TCP)")
      .Flag("tp-timeout-ms", "a dead or hung rank fails the run within this time, 100..3600000 (default 30000)")
      .Flag("adapter", "a LoRA adapter folder as peft saves it (adapter_config.json, adapter_model.safetensors)")
      .Flag("chat", "wrap the prompt in Gemma's chat template and stop at <end_of_turn>", true)
      .Flag("json", "print one JSON object with prompt_ids, token_ids, text, finish_reason", true);
  DeclareInterventionFlags(args);
  DeclareDeviceFlags(args, "cpu (default) or cuda: rank r of a --tp group runs on GPU r");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;

  SequenceSpec req;
  auto max_new = args.GetInt("max-new-tokens", 32, 1, 8192);
  auto temperature = args.GetDouble("temperature", 0.0, 0.0, 1e6);
  auto top_k = args.GetInt("top-k", 0, 0, 1 << 22);
  auto top_p = args.GetDouble("top-p", 1.0, 1e-9, 1.0);
  auto seed = args.GetInt("seed", 0, 0, INT64_MAX);
  auto num_beams = args.GetInt("num-beams", 0, 1, BeamSearchParams::kMaxBeams);
  auto length_penalty = args.GetDouble("length-penalty", 1.0, -10.0, 10.0);
  auto threads = args.GetInt("threads", 0, 0, 4096);
  auto tp = args.GetInt("tp", 1, 1, 64);
  auto tp_timeout = args.GetInt("tp-timeout-ms", 30000, 100, 3600000);
  if (!tp_timeout.ok()) return Fail(kCmd, tp_timeout.status());
  for (const absl::Status& s : {max_new.status(), temperature.status(), top_k.status(), top_p.status(), seed.status(),
                                threads.status(), tp.status(), num_beams.status(), length_penalty.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  for (const char* beam_only : {"length-penalty", "early-stopping"}) {
    if (args.Has(beam_only) && !args.Has("num-beams")) {
      return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat("--", beam_only, " applies to beam search: give "
                                                                "--num-beams N with it")));
    }
  }
  SetThreads(static_cast<int>(*threads));
  const bool chat = args.Has("chat"), json = args.Has("json");
  auto model = OpenLocalModel(args.Get("model"));
  if (!model.ok()) return Fail(kCmd, model.status());
  const ModelConfig& config = model->config();
  auto prompt = PromptIds(args, model->tokenizer.get(), config.vocab_size, config.bos_id, chat);
  if (!prompt.ok()) return Fail(kCmd, prompt.status());
  if (static_cast<int64_t>(prompt->size()) + *max_new > config.max_position_embeddings) {
    const int64_t room = config.max_position_embeddings - static_cast<int64_t>(prompt->size());
    return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(
                          "prompt (", prompt->size(), " tokens) + --max-new-tokens (", *max_new,
                          ") exceeds the model's context of ", config.max_position_embeddings,
                          room > 0 ? absl::StrCat("; allowed: --max-new-tokens at most ", room, " for this prompt")
                                   : std::string("; the prompt alone fills it"))));
  }
  auto interventions = InterventionsFromFlags(args, config);
  if (!interventions.ok()) return Fail(kCmd, interventions.status());
  auto device = DeviceChoiceFromFlags(args);
  if (!device.ok()) return Fail(kCmd, device.status());
  // Room for exactly this request in the KV cache: each beam's positions, and a block more each for the
  // positions a forked beam computes again.
  const int beams = static_cast<int>(*num_beams);
  const int64_t kv_tokens = (static_cast<int64_t>(prompt->size()) + *max_new + (beams > 0 ? 16 : 0)) * std::max(1, beams);
  if (auto s = AttachBackend(*model, kv_tokens, static_cast<int>(*tp), *tp_timeout, args.Get("tp-transport", "shm"),
                              *device);
      !s.ok()) {
    return Fail(kCmd, s);
  }

  req.prompt = *prompt;
  req.max_new_tokens = static_cast<int>(*max_new);
  req.interventions = *std::move(interventions);
  req.sampling = {static_cast<float>(*temperature), static_cast<int>(*top_k), static_cast<float>(*top_p),
                  static_cast<uint64_t>(*seed)};
  if (auto s = ValidateSamplingParams(req.sampling); !s.ok()) return Fail(kCmd, s);
  req.beams = {beams, static_cast<float>(*length_penalty), args.Has("early-stopping")};
  if (auto s = ValidateBeamSearch(req); !s.ok()) return Fail(kCmd, s);
  req.stop_ids = {config.eos_id};
  req.stop_ids.insert(req.stop_ids.end(), config.extra_eos_ids.begin(), config.extra_eos_ids.end());
  const Tokenizer* tok = model->tokenizer.get();
  if (chat && tok && tok->end_of_turn_id() >= 0) req.stop_ids.push_back(tok->end_of_turn_id());

  // Ids the tokenizer cannot render (a model vocabulary wider than its tokenizer) print as <unk>.
  auto printable = [&](int32_t id) { return tok && id < tok->vocab_size() ? id : tok ? tok->PieceToId("<unk>") : id; };
  std::unique_ptr<StreamingDecoder> stream;
  if (!json && tok) stream = std::make_unique<StreamingDecoder>(tok);
  auto adapter = RegisterAdapterFlag(*model, args.Get("adapter"));
  if (!adapter.ok()) return Fail(kCmd, adapter.status());
  req.adapter = *adapter;
  req.cache_salt = ModelChangesCacheSalt(req.adapter, req.interventions);
  LocalExecutor executor(model->backend.get(), SequenceHistory::kDefaultMaxSequences, model->adapters.get());
  Engine engine(executor.EngineOptionsFor({}), &executor);
  auto results = RunBatch(engine, {req}, [&](int, const RowResult& r) {
    const int32_t id = r.token;
    if (!stream || id == config.eos_id || (chat && id == tok->end_of_turn_id())) return;
    auto delta = stream->Add(printable(id));
    if (delta.ok()) {
      std::fputs(delta->c_str(), stdout);
      std::fflush(stdout);
    }
  });
  if (!results.ok()) return Fail(kCmd, results.status());
  const CompletedSequence& r = (*results)[0];
  if (!json) {
    if (stream && beams > 0) {  // a beam search's tokens are known only at its end
      for (int32_t id : r.tokens) {
        if (id == config.eos_id || (chat && id == tok->end_of_turn_id())) continue;
        if (auto delta = stream->Add(printable(id)); delta.ok()) std::fputs(delta->c_str(), stdout);
      }
    }
    if (stream) {
      if (auto tail = stream->Flush(); tail.ok()) std::fputs(tail->c_str(), stdout);
    } else {
      for (int32_t id : r.tokens) std::printf("%d ", id);
    }
    std::printf("\n");
    return 0;
  }
  auto text_of = [&](const std::vector<int32_t>& ids) -> absl::StatusOr<std::string> {
    std::vector<int32_t> shown;
    for (int32_t id : ids) {
      if (id != config.eos_id && !(chat && tok && id == tok->end_of_turn_id())) shown.push_back(printable(id));
    }
    if (!tok) return std::string();
    return tok->Decode(shown);
  };
  auto text = text_of(r.tokens);
  if (!text.ok()) return Fail(kCmd, text.status());
  nlohmann::json out = {{"prompt_ids", *prompt}, {"token_ids", r.tokens}, {"text", *text},
                        {"finish_reason", FinishReasonName(r.finish)}, {"token_logprobs", r.token_logprobs}};
  if (beams > 0) {
    nlohmann::json all = nlohmann::json::array();
    for (const Beam& b : r.beams) {
      auto beam_text = text_of(b.tokens);
      if (!beam_text.ok()) return Fail(kCmd, beam_text.status());
      all.push_back({{"token_ids", b.tokens}, {"text", *beam_text}, {"finish_reason", FinishReasonName(b.finish)},
                     {"token_logprobs", b.logprobs}, {"sum_logprob", b.sum_logprob}, {"score", b.score}});
    }
    out["beams"] = all;
  }
  std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace gemma
