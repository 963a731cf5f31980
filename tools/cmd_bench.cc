// gemma bench: prefill and decode throughput of the engine, with decode as a fraction of memory bandwidth.
#include <omp.h>

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/progress.h"
#include "shard/model/lora_loader.h"
#include "shard/model/random_lora_adapter.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cpu/fma_throughput.h"
#include "shard/cpu/matmul.h"
#include "shard/cpu/matmul_bf16.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/local_model.h"
#include "tools/memory_bandwidth.h"

namespace gemma {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Figures {
  int threads;
  double prefill_tokens_per_s, decode_batch1, decode_batch8, bandwidth;
  double fma_rate;  // f32 multiply-adds per second these threads reach: prompts and batches are bound by it
  StepTimings batch1_step, batch8_step;   // where a batch-1 (batch-8) decode step's time went
  double decode_batch8_adapters = 0;     // with --adapters: batch 8 with adapters mixed in
  double decode_batch8_base_again = 0;   // and the base batch 8 measured right after it
};

// Resident memory of a process in bytes (its mapped weights included), or -1.
int64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// Sequences of `batch` random prompts of `prompt_len`, each with its own blocks.
struct BenchBatch {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> blocks;
};

BenchBatch MakeBatch(int batch, int prompt_len, int capacity, int block_size, int vocab, uint32_t seed) {
  BenchBatch b;
  std::mt19937 rng(seed);
  const int blocks_per_seq = (capacity + block_size - 1) / block_size;
  for (int s = 0; s < batch; ++s) {
    std::vector<int32_t> t(prompt_len);
    t[0] = 2;
    for (int i = 1; i < prompt_len; ++i) t[i] = 4 + static_cast<int32_t>(rng() % (vocab - 4));
    b.tokens.push_back(t);
    std::vector<int32_t> blk(blocks_per_seq);
    for (int i = 0; i < blocks_per_seq; ++i) blk[i] = s * blocks_per_seq + i;
    b.blocks.push_back(blk);
  }
  return b;
}

absl::StatusOr<double> PrefillTokensPerSecond(Backend* backend, int prompt_len) {
  const auto& c = backend->config();
  BenchBatch b = MakeBatch(1, prompt_len, prompt_len, backend->kv_block_size(), c.vocab_size, 1);
  SequenceStep s{b.tokens[0], 0, b.blocks[0], LogitsWanted::kLast};
  StepLogits logits;
  const double start = Now();
  if (auto st = backend->Forward({&s, 1}, &logits); !st.ok()) return st;
  return prompt_len / (Now() - start);
}

// Generated tokens per second of `steps` decode steps of `batch` sequences after a `context`-token prefill; row s
// runs with adapters[s % adapters.size()] (none when empty). `per_step` (optional) gets where a step's time went,
// on average, as this process's backend times it (the leader's rank under TP; on a GPU, host time unless the
// backend times its stages).
absl::StatusOr<double> DecodeTokensPerSecond(Backend* backend, int batch, int context, int steps,
                                             StepTimings* per_step = nullptr,
                                             std::span<const std::shared_ptr<const LoraAdapter>> adapters = {}) {
  const auto& c = backend->config();
  BenchBatch b = MakeBatch(batch, context, context + steps + 1, backend->kv_block_size(), c.vocab_size, 2);
  StepLogits logits;
  std::vector<SequenceStep> step(batch);
  auto adapter_of = [&](int s) { return adapters.empty() ? nullptr : adapters[s % adapters.size()].get(); };
  for (int s = 0; s < batch; ++s) {
    step[s] = {b.tokens[s], 0, b.blocks[s], LogitsWanted::kLast};
    step[s].adapter = adapter_of(s);
  }
  if (auto st = backend->Forward(step, &logits); !st.ok()) return st;
  std::vector<int32_t> next(batch, 5);
  double start = 0;
  StepTimings sum;
  for (int i = 0; i <= steps; ++i) {
    if (i == 1) start = Now();  // the first decode step warms caches and is not counted
    for (int s = 0; s < batch; ++s) {
      step[s] = {{&next[s], 1}, context + i, b.blocks[s], LogitsWanted::kLast};
      step[s].adapter = adapter_of(s);
    }
    if (auto st = backend->Forward(step, &logits); !st.ok()) return st;
    if (i >= 1) {
      const StepTimings& t = backend->last_timings();
      sum.matmul_seconds += t.matmul_seconds;
      sum.attention_seconds += t.attention_seconds;
      sum.collective_seconds += t.collective_seconds;
      sum.other_seconds += t.other_seconds;
    }
  }
  const double elapsed = Now() - start;
  if (per_step) {
    *per_step = {sum.matmul_seconds / steps, sum.attention_seconds / steps, sum.collective_seconds / steps,
                 sum.other_seconds / steps};
  }
  return batch * steps / elapsed;
}

// Which kernel the weight products ran on: what ActivationsThatRun keeps of --activations (bf16 needs AVX512-BF16
// with VBMI at least 1.25x the f32 rate, int8 VNNI), for the formats those kernels take (open_shard.cc refuses
// others).
std::string MatMulKernel(const DeviceChoice& d, const ModelWeights& w) {
  if (d.device != "cpu") return "the GPU's";
  // The shard settled the activations the same way when it opened; `why` names a fallback.
  const auto requested = ParseMatMulActivations(d.activations);
  std::string why;
  const MatMulActivations runs = requested.ok() ? ActivationsThatRun(*requested, &why) : MatMulActivations::kF32;
  auto kernel = [&](WeightFormat f) -> std::string {
    if (runs == MatMulActivations::kBf16 && Bf16ActivationsMultiply(f)) {
      return f == WeightFormat::kFp8 ? "avx512-bf16 dot products over fp8 codes widened by vpermi2b (vdpbf16ps)"
                                     : "avx512-bf16 dot products (vdpbf16ps)";
    }
    if (runs == MatMulActivations::kInt8 && f == WeightFormat::kInt8) {
      return "avx512-vnni int8 dot products (vpdpbusd)";
    }
    if (runs == MatMulActivations::kInt8 && f == WeightFormat::kInt4) {
      return "avx512-vnni int8 dot products over 4-bit codes (vpdpbusd)";
    }
    return why.empty() ? absl::StrCat(MatMulTarget(), " f32") : absl::StrCat(MatMulTarget(), " f32 (", why, ")");
  };
  const std::string layers = kernel(w.matrix_format()), head = kernel(w.embed().format);
  return layers == head ? layers : absl::StrCat(layers, "; LM head: ", head);
}

nlohmann::json StepJson(const StepTimings& t) {
  return {{"matmul", 1e3 * t.matmul_seconds},
          {"attention", 1e3 * t.attention_seconds},
          {"collective", 1e3 * t.collective_seconds},
          {"other", 1e3 * t.other_seconds}};
}

}  // namespace

int BenchCommand(int argc, char** argv) {
  const char* kCmd = "bench";
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]).rfind("--server", 0) == 0) {
#ifdef GEMMA_HAVE_SERVICES
      return BenchServerCommand(argc, argv);
#else
      return Fail(kCmd, absl::UnimplementedError("--server needs a build with the gRPC services"));
#endif
    }
  }
  Args args(kCmd, "--model DIR [--threads N] [--json]  |  --server HOST:PORT [...] (a running router; with --help, "
                  "its flags)");
  args.Flag("model", "checkpoint directory (make-tiny --shape 2b for the recorded figures)")
      .Flag("threads", "thread count for the all-cores run (default: all cores); a 1-thread run is always added")
      .Flag("prompt-len", "prefill prompt length (default 512)")
      .Flag("steps", "decode steps timed per batch size (default 8)")
      .Flag("decode-context", "context of the batch-1 decode (default 64; batch 8 stays at 64: eight long prompts "
                              "would take minutes to fill on a CPU)")
      .Flag("tp", "tensor-parallel degree: a local group of N processes, threads split among them (default 1)")
      .Flag("tp-transport", "collectives of a local group: shm (shared memory, default) or gloo (TCP)")
      .Flag("adapters", "also decode batch 8 with this many LoRA adapters mixed in, rows round-robin (default 0)")
      .Flag("adapter-rank", "rank of those adapters, on all seven projections, 1..64 (default 16)")
      .Flag("json", "print one JSON object", true);
  DeclareDeviceFlags(args, "cpu (default) or cuda: rank r of a --tp group runs on GPU r");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  if (!args.Has("model")) return Fail(kCmd, absl::InvalidArgumentError("--model DIR is required"));
  auto num_adapters = args.GetInt("adapters", 0, 0, 8);
  auto adapter_rank = args.GetInt("adapter-rank", 16, 1, kMaxLoraRank);
  if (!num_adapters.ok()) return Fail(kCmd, num_adapters.status());
  if (!adapter_rank.ok()) return Fail(kCmd, adapter_rank.status());
  auto threads = args.GetInt("threads", omp_get_num_procs(), 1, 4096);
  auto prompt_len = args.GetInt("prompt-len", 512, 2, 8192);
  auto steps = args.GetInt("steps", 8, 1, 10000);
  auto tp = args.GetInt("tp", 1, 1, 64);
  auto decode_context_1 = args.GetInt("decode-context", 64, 1, 131072);
  for (const absl::Status& s :
       {threads.status(), prompt_len.status(), steps.status(), tp.status(), decode_context_1.status()}) {
    if (!s.ok()) return Fail(kCmd, s);
  }
  const int decode_context = 64;
  // The prefill, the batch-8 decode and the batch-1 decode run one after another over the same blocks.
  const int64_t kv_tokens = std::max<int64_t>({*prompt_len, 8 * (decode_context + *steps + 1 + 16),
                                                *decode_context_1 + *steps + 1 + 16});
  auto model = OpenLocalModel(args.Get("model"));
  if (!model.ok()) return Fail(kCmd, model.status());
  auto device = DeviceChoiceFromFlags(args);
  if (!device.ok()) return Fail(kCmd, device.status());
  if (*tp > 1) SetThreads(static_cast<int>(*threads));  // split among the ranks by AttachBackend
  if (auto s = AttachBackend(*model, kv_tokens, static_cast<int>(*tp), 30000, args.Get("tp-transport", "shm"), *device);
      !s.ok()) {
    return Fail(kCmd, s);
  }
  if (*prompt_len > model->config().max_position_embeddings) {
    return Fail(kCmd, absl::InvalidArgumentError("--prompt-len exceeds the model's context"));
  }
  if (*decode_context_1 + *steps + 1 > model->config().max_position_embeddings) {
    return Fail(kCmd, absl::InvalidArgumentError("--decode-context plus --steps exceeds the model's context"));
  }
  const int64_t weight_bytes = model->weights->WeightBytesPerStep();
  if (*num_adapters > 0 && *tp > 1) {
    return Fail(kCmd, absl::InvalidArgumentError("--adapters runs with --tp 1 (its adapters are made in memory)"));
  }
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;
  for (int i = 0; i < *num_adapters; ++i) {
    adapters.push_back(RandomLoraAdapter(model->config(), static_cast<int>(*adapter_rank), 1000 + i));
  }

  // Threads per rank: a 1-thread run and an all-cores run; a TP group keeps the split it started with.
  std::vector<int> thread_counts = {1};
  if (*threads != 1) thread_counts.push_back(static_cast<int>(*threads));
  if (*tp > 1) thread_counts = {omp_get_max_threads()};
  std::vector<Figures> figures;
  Progress progress("benchmark", static_cast<int64_t>(thread_counts.size()) * (adapters.empty() ? 4 : 6));
  int done = 0;
  for (int t : thread_counts) {
    if (*tp == 1) SetThreads(t);
    Figures f{t};
    f.bandwidth = MeasureReadBandwidth(int64_t{1} << 30, 5);
    f.fma_rate = MeasureFmaThroughput(3);
    progress.Update(++done);
    auto prefill = PrefillTokensPerSecond(model->backend.get(), static_cast<int>(*prompt_len));
    progress.Update(++done);
    auto d1 = DecodeTokensPerSecond(model->backend.get(), 1, static_cast<int>(*decode_context_1), static_cast<int>(*steps),
                                    &f.batch1_step);
    progress.Update(++done);
    auto d8 = DecodeTokensPerSecond(model->backend.get(), 8, decode_context, static_cast<int>(*steps),
                                    &f.batch8_step);
    progress.Update(++done);
    for (const absl::Status& s : {prefill.status(), d1.status(), d8.status()}) {
      if (!s.ok()) return Fail(kCmd, s);
    }
    if (!adapters.empty()) {
      // The base batch again right after, so the ratio compares runs of one moment on a shared machine.
      auto mixed = DecodeTokensPerSecond(model->backend.get(), 8, decode_context, static_cast<int>(*steps), nullptr,
                                         adapters);
      progress.Update(++done);
      auto base = DecodeTokensPerSecond(model->backend.get(), 8, decode_context, static_cast<int>(*steps));
      progress.Update(++done);
      if (!mixed.ok()) return Fail(kCmd, mixed.status());
      if (!base.ok()) return Fail(kCmd, base.status());
      f.decode_batch8_adapters = *mixed;
      f.decode_batch8_base_again = *base;
    }
    f.prefill_tokens_per_s = *prefill;
    f.decode_batch1 = *d1;
    f.decode_batch8 = *d8;
    figures.push_back(f);
  }
  progress.Finish();

  const auto& c = model->config();
  nlohmann::json rss = nlohmann::json::array({ResidentBytes(::getpid())});
  for (pid_t pid : model->followers) rss.push_back(ResidentBytes(pid));
  auto fraction = [&](const Figures& f) { return weight_bytes * f.decode_batch1 / f.bandwidth; };
  // A decode token multiplies every weight once (the tied embedding as the LM head); a prompt token every layer
  // weight, and the LM head runs for the prompt's last row only. Attention's share is left out.
  const double head_macs = static_cast<double>(c.vocab_size) * c.hidden_size;
  const double decode_macs = static_cast<double>(c.ParameterCount());
  const double prompt_macs = decode_macs - head_macs + head_macs / static_cast<double>(*prompt_len);
  auto compute_fraction = [&](double macs_per_token, double tokens_per_s, const Figures& f) {
    return macs_per_token * tokens_per_s / (*tp * f.fma_rate);
  };
  auto prefill_fraction = [&](const Figures& f) { return compute_fraction(prompt_macs, f.prefill_tokens_per_s, f); };
  auto batch8_fraction = [&](const Figures& f) { return compute_fraction(decode_macs, f.decode_batch8, f); };
  const Figures& all = figures.back();
  if (args.Has("json")) {
    nlohmann::json runs = nlohmann::json::array();
    for (const auto& f : figures) {
      runs.push_back({{"threads", f.threads},
                      {"prefill_tokens_per_s", f.prefill_tokens_per_s},
                      {"decode_tokens_per_s_batch1", f.decode_batch1},
                      {"decode_tokens_per_s_batch8", f.decode_batch8},
                      {"read_bandwidth_bytes_per_s", f.bandwidth},
                      {"fma_macs_per_s", f.fma_rate},
                      {"decode_batch1_bandwidth_fraction", fraction(f)},
                      // Matrix multiply-adds a second over the f32 rate measured (bf16 and int8 dot products
                      // can pass 1).
                      {"prefill_fma_fraction", prefill_fraction(f)},
                      {"decode_batch8_fma_fraction", batch8_fraction(f)},
                      {"decode_batch1_collective_fraction", f.batch1_step.collective_seconds * f.decode_batch1},
                      // Per batch-1 decode step: attention grows with the context, the rest does not.
                      {"decode_batch1_step_ms", StepJson(f.batch1_step)},
                      {"decode_batch8_step_ms", StepJson(f.batch8_step)}});
      if (!adapters.empty()) {
        runs.back()["decode_tokens_per_s_batch8_adapters"] = f.decode_batch8_adapters;
        runs.back()["decode_tokens_per_s_batch8_base_again"] = f.decode_batch8_base_again;
        runs.back()["adapters_vs_base_batch8"] =
            f.decode_batch8_adapters / (0.5 * (f.decode_batch8 + f.decode_batch8_base_again));
      }
    }
    nlohmann::json out = {{"model", c.DebugString()},
                          {"weights", device->weights},
                          {"cpu_kernels", MatMulTarget()},
                          {"kv_cache_dtype", device->kv_cache_dtype},
                          {"activations", device->activations},
                          {"matmul_kernel", MatMulKernel(*device, *model->weights)},
                          {"prompt_len", *prompt_len},
                          {"decode_context_batch1", *decode_context_1},
                          {"weight_bytes", weight_bytes},
                          {"threads", all.threads},
                          {"tp", *tp},
                          {"resident_bytes_per_rank", rss},
                          {"prefill_tokens_per_s", all.prefill_tokens_per_s},
                          {"decode_tokens_per_s_batch1", all.decode_batch1},
                          {"decode_tokens_per_s_batch8", all.decode_batch8},
                          {"read_bandwidth_bytes_per_s", all.bandwidth},
                          {"fma_macs_per_s", all.fma_rate},
                          {"decode_batch1_bandwidth_fraction", fraction(all)},
                          {"prefill_fma_fraction", prefill_fraction(all)},
                          {"runs", runs}};
    if (!adapters.empty()) {
      out["adapters"] = *num_adapters;
      out["adapter_rank"] = *adapter_rank;
      out["adapters_vs_base_batch8"] = runs.back()["adapters_vs_base_batch8"];
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("model: %s, TP %d, weights read per decode step by rank 0: %.2f GB, resident per rank: %s\n",
              c.DebugString().c_str(), static_cast<int>(*tp), weight_bytes / 1e9, rss.dump().c_str());
  std::printf("%8s %14s %12s %12s %10s %14s %16s\n", "threads", "prefill tok/s", "decode b=1", "decode b=8", "b8/b1",
              "b1 % of bw", "prefill % of fma");
  for (const auto& f : figures) {
    std::printf("%8d %14.2f %12.2f %12.2f %10.2f %13.1f%% %15.1f%%  (read bandwidth %.1f GB/s, f32 FMA %.1f G/s)\n",
                f.threads, f.prefill_tokens_per_s, f.decode_batch1, f.decode_batch8, f.decode_batch8 / f.decode_batch1,
                100 * fraction(f), 100 * prefill_fraction(f), f.bandwidth / 1e9,
                f.fma_rate / 1e9);
    if (*tp > 1)
      std::printf("         collectives: %.1f%% of batch-1 decode step time\n",
                  100 * f.batch1_step.collective_seconds * f.decode_batch1);
    if (!adapters.empty()) {
      std::printf("         batch 8 with %d rank-%d adapters: %.2f tok/s, %.3f of the base batch 8 (%.2f, %.2f)\n",
                  static_cast<int>(*num_adapters), static_cast<int>(*adapter_rank), f.decode_batch8_adapters,
                  f.decode_batch8_adapters / (0.5 * (f.decode_batch8 + f.decode_batch8_base_again)), f.decode_batch8,
                  f.decode_batch8_base_again);
    }
  }
  return 0;
}

}  // namespace gemma
