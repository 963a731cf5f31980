// gemma-cuda-bench: the CUDA backend's speed on one GPU, beside the device's own limits measured in the same run:
// decode tokens/s at several batch sizes over a fixed context, batch-1 decode as a share of the device's memory
// bandwidth, and prefill tokens/s with the TFLOP/s it reaches against a plain cuBLASLt bf16 GEMM.
// Needs no gRPC and no tokenizer, so it builds wherever shard/ does.
//
// usage: gemma-cuda-bench --model DIR [--make_7b] [--batches 1,16,64] [--context 512] [--steps 32]
//                         [--prompt 2048] [--prefill_chunk 512] [--json FILE]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/gemm.h"
#include "shard/checkpoint/progress.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(bool, make_7b, false, "first write a random-weight Gemma 7B-shape bf16 checkpoint into --model (if absent)");
ABSL_FLAG(std::string, batches, "1,16,64", "decode batch sizes");
ABSL_FLAG(int, context, 512, "context of each decoding sequence");
ABSL_FLAG(int, steps, 32, "timed decode steps per batch size");
ABSL_FLAG(int, prompt, 2048, "prefill prompt length");
ABSL_FLAG(int, prefill_chunk, 512, "the prompt once more in chunks of this many tokens, as the server schedules it");
ABSL_FLAG(std::string, json, "", "also write the figures here");

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "gemma-cuda-bench: %s\n", std::string(s.message()).c_str());
  return 1;
}

// Device-to-device copy bandwidth, counting bytes read and written.
absl::StatusOr<double> DeviceBandwidth() {
  const size_t bytes = size_t{2} << 30;
  auto a = cuda::DeviceBuffer::Allocate(bytes, "the bandwidth probe");
  auto b = cuda::DeviceBuffer::Allocate(bytes, "the bandwidth probe");
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  cudaMemcpy(b->get(), a->get(), bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const auto start = Clock::now();
  for (int i = 0; i < 10; ++i) cudaMemcpy(b->get(), a->get(), bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  return 2.0 * bytes * 10 / Since(start);
}

// TFLOP/s of one bf16 GEMM of the prefill's largest shape, through the same cuBLASLt path the backend uses.
absl::StatusOr<double> GemmTflops(int64_t M, int64_t N, int64_t K) {
  auto gemm = cuda::Gemm::Create();
  if (!gemm.ok()) return gemm.status();
  auto a = cuda::DeviceBuffer::Allocate(M * K * 2, "GEMM probe input");
  auto w = cuda::DeviceBuffer::Allocate(N * K * 2, "GEMM probe weights");
  auto c = cuda::DeviceBuffer::Allocate(M * N * 4, "GEMM probe output");
  for (const absl::Status& s : {a.status(), w.status(), c.status()}) {
    if (!s.ok()) return s;
  }
  cudaMemset(a->get(), 0x3c, M * K * 2);  // small nonzero bf16 values
  cudaMemset(w->get(), 0x3c, N * K * 2);
  for (int i = 0; i < 3; ++i) {
    if (auto s = (*gemm)->Run(a->get(), w->get(), K, c->as<float>(), N, M, N, K, cuda::Dtype::kBf16, nullptr); !s.ok()) return s;
  }
  cudaDeviceSynchronize();
  const auto start = Clock::now();
  for (int i = 0; i < 10; ++i) {
    if (auto s = (*gemm)->Run(a->get(), w->get(), K, c->as<float>(), N, M, N, K, cuda::Dtype::kBf16, nullptr); !s.ok()) return s;
  }
  cudaDeviceSynchronize();
  return 2.0 * M * N * K * 10 / Since(start) / 1e12;
}

nlohmann::json StageMilliseconds(const StepTimings& t) {
  return {{"matmul", 1000 * t.matmul_seconds},
          {"attention", 1000 * t.attention_seconds},
          {"collective", 1000 * t.collective_seconds},
          {"other", 1000 * t.other_seconds}};
}

std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> t(n);
  t[0] = 2;
  for (int i = 1; i < n; ++i) t[i] = 4 + static_cast<int32_t>((seed * 2654435761u + i * 40503u) % (vocab - 4));
  return t;
}

// Greedy draws for the first `rows` logits rows: steps run as the worker runs them, tokens drawn on the device
// and logits left there.
std::vector<RowSample> Greedy(int rows) {
  std::vector<RowSample> s(rows);
  for (int i = 0; i < rows; ++i) s[i].row = i;
  return s;
}

// Sequence s's block table: blocks_per_sequence blocks of its own, from first_block on.
std::vector<int32_t> SequenceTable(int first_block, int blocks_per_sequence, int s) {
  std::vector<int32_t> t(blocks_per_sequence);
  for (int i = 0; i < blocks_per_sequence; ++i) t[i] = first_block + s * blocks_per_sequence + i;
  return t;
}

// Tokens/s of `batch` sequences decoding `steps` tokens each after a `context`-token prompt, their blocks from
// `first_block` on. The first two decode steps warm up (the second captures the decode graph) and are not timed.
absl::StatusOr<double> DecodeTokensPerSecond(Backend& backend, int batch, int context, int steps, int first_block,
                                             int blocks_per_sequence) {
  const int vocab = backend.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts, tables;
  for (int s = 0; s < batch; ++s) {
    prompts.push_back(Tokens(context, vocab, 100 + s));
    tables.push_back(SequenceTable(first_block, blocks_per_sequence, s));
  }
  std::vector<SequenceStep> step(batch);
  for (int s = 0; s < batch; ++s) step[s] = {prompts[s], 0, tables[s], LogitsWanted::kLast};
  const std::vector<RowSample> rows = Greedy(batch);
  StepLogits logits;
  std::vector<SampledToken> drawn;
  if (auto st = backend.ForwardAndSample(step, rows, false, &logits, &drawn); !st.ok()) return st;
  std::vector<int32_t> next(batch, 5);
  double elapsed = 0;
  for (int i = 0; i <= steps + 1; ++i) {
    for (int s = 0; s < batch; ++s) step[s] = {{&next[s], 1}, context + i, tables[s], LogitsWanted::kLast};
    const auto start = Clock::now();
    if (auto st = backend.ForwardAndSample(step, rows, false, &logits, &drawn); !st.ok()) return st;
    for (int s = 0; s < batch; ++s) next[s] = drawn[s].token;
    if (i > 1) elapsed += Since(start);
  }
  return batch * steps / elapsed;
}


int Run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return Fail(absl::InvalidArgumentError("--model DIR is required"));
  if (absl::GetFlag(FLAGS_make_7b) && !std::filesystem::exists(dir + "/config.json")) {
    std::fprintf(stderr, "writing a random Gemma 7B-shape checkpoint to %s\n", dir.c_str());
    RandomCheckpointOptions options;
    options.drop_from_page_cache = false;  // read back at once, by this bench and by the baseline after it
    if (auto s = WriteRandomCheckpoint(dir, Gemma7BShape(), options, ""); !s.ok()) return Fail(s);
  }
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',', absl::SkipEmpty())) {
    int v;
    if (!absl::SimpleAtoi(b, &v) || v < 1) return Fail(absl::InvalidArgumentError("--batches: positive integers"));
    batches.push_back(v);
  }
  const int context = absl::GetFlag(FLAGS_context), steps = absl::GetFlag(FLAGS_steps), prompt = absl::GetFlag(FLAGS_prompt);
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return Fail(ckpt.status());
  auto weights = ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*ckpt)));
  if (!weights.ok()) return Fail(weights.status());
  std::shared_ptr<const ModelWeights> w(std::move(*weights));
  const ModelConfig& c = w->config();
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int64_t per_seq = context + steps + 16;
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>((max_batch * per_seq + prompt) / kv.block_size + max_batch + 2);
  CudaBackendOptions options;
  options.stage_timing = true;  // steps launched one kernel at a time report device time per stage
  auto made = CreateCudaBackend(w, kv, options);
  if (!made.ok()) return Fail(made.status());
  Backend& backend = **made;  // reset before the cuBLASLt-only comparison below
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  auto bandwidth = DeviceBandwidth();
  if (!bandwidth.ok()) return Fail(bandwidth.status());
  auto gemm_tflops = GemmTflops(prompt, 2 * static_cast<int64_t>(c.intermediate_size), c.hidden_size);
  if (!gemm_tflops.ok()) return Fail(gemm_tflops.status());

  // Prefill: one prompt, logits for its last token only.
  const auto prompt_tokens = Tokens(prompt, c.vocab_size, 1);
  std::vector<int32_t> prompt_blocks(prompt / kv.block_size + 1);
  for (size_t i = 0; i < prompt_blocks.size(); ++i) prompt_blocks[i] = static_cast<int32_t>(i);
  StepLogits logits;
  std::vector<SampledToken> drawn;
  SequenceStep pre{prompt_tokens, 0, prompt_blocks, LogitsWanted::kLast};
  if (auto s = backend.ForwardAndSample({&pre, 1}, Greedy(1), false, &logits, &drawn); !s.ok()) return Fail(s);  // warm-up
  const auto start = Clock::now();
  if (auto s = backend.ForwardAndSample({&pre, 1}, Greedy(1), false, &logits, &drawn); !s.ok()) return Fail(s);
  const double prefill_s = Since(start);
  const nlohmann::json prefill_stages = StageMilliseconds(backend.last_timings());
  // The same prompt as the server schedules it: chunks of --prefill_chunk tokens, each step after the first
  // attending to the chunks before it in the cache.
  const int chunk = absl::GetFlag(FLAGS_prefill_chunk);
  if (chunk < 1) return Fail(absl::InvalidArgumentError("--prefill_chunk must be positive"));
  double chunked_s = 0;
  for (int round = 0; round < 2; ++round) {  // the first warms up
    const auto chunked_start = Clock::now();
    for (int begin = 0; begin < prompt; begin += chunk) {
      const int n = std::min(chunk, prompt - begin);
      SequenceStep part{std::span<const int32_t>(prompt_tokens).subspan(begin, n), begin, prompt_blocks,
                        begin + n == prompt ? LogitsWanted::kLast : LogitsWanted::kNone};
      const std::vector<RowSample> rows = begin + n == prompt ? Greedy(1) : std::vector<RowSample>{};
      if (auto s = backend.ForwardAndSample({&part, 1}, rows, false, &logits, &drawn); !s.ok()) return Fail(s);
    }
    chunked_s = Since(chunked_start);
  }
  // Every weight once per token, except the output projection (the embedding), applied to the last token only.
  const double params = static_cast<double>(w->WeightBytesPerStep()) / 2;
  const double head_params = static_cast<double>(c.vocab_size) * c.hidden_size;
  const double attention_flops = 2.0 * c.num_layers * c.num_heads * c.head_dim * double(prompt) * prompt;  // QK^T + PV, causal
  const double prefill_tflops =
      (2.0 * (params - head_params) * prompt + 2.0 * head_params + attention_flops) / prefill_s / 1e12;

  nlohmann::json decode = nlohmann::json::array();
  Progress progress("decode sweep", static_cast<int64_t>(batches.size()));
  int done = 0;
  double batch1 = 0;
  const int first_block = static_cast<int>(prompt_blocks.size());
  const int blocks_per_sequence = static_cast<int>(per_seq / kv.block_size + 1);
  for (int b : batches) {
    auto tps = DecodeTokensPerSecond(backend, b, context, steps, first_block, blocks_per_sequence);
    if (!tps.ok()) return Fail(tps.status());
    if (b == 1) batch1 = *tps;
    decode.push_back({{"batch", b}, {"tokens_per_s", *tps}, {"step_ms", 1000.0 * b / *tps}});
    progress.Update(++done);
  }
  progress.Finish();

  // One batch-1 decode step launched kernel by kernel (logits for all rows: no graph), for its stages.
  nlohmann::json decode_stages;
  double decode_launched_ms = 0;
  {
    const std::vector<int32_t> table = SequenceTable(first_block, blocks_per_sequence, 0);
    const int32_t token = 5;
    SequenceStep step{{&token, 1}, context, table, LogitsWanted::kAll};
    for (int i = 0; i < 2; ++i) {
      const auto start = Clock::now();
      if (auto s = backend.ForwardAndSample({&step, 1}, Greedy(1), false, &logits, &drawn); !s.ok()) return Fail(s);
      decode_launched_ms = 1000 * Since(start);
    }
    decode_stages = StageMilliseconds(backend.last_timings());
  }

  // Batch-1 decode once more with cuBLASLt for the decode GEMMs too, to compare with the weight-streaming kernel.
  made->reset();
  CudaBackendOptions without_small;
  without_small.small_batch_gemm = false;
  auto lt_backend = CreateCudaBackend(w, kv, without_small);
  if (!lt_backend.ok()) return Fail(lt_backend.status());
  auto batch1_cublaslt = DecodeTokensPerSecond(**lt_backend, 1, context, steps, first_block, blocks_per_sequence);
  if (!batch1_cublaslt.ok()) return Fail(batch1_cublaslt.status());
  const double weight_bytes = static_cast<double>(w->WeightBytesPerStep());
  nlohmann::json out = {{"gpu", prop.name},
                        {"model", c.DebugString()},
                        {"weight_bytes_per_step", weight_bytes},
                        {"device_bandwidth_bytes_per_s", *bandwidth},
                        {"decode_context", context},
                        {"decode", decode},
                        {"decode_batch1_bandwidth_fraction", batch1 > 0 ? weight_bytes * batch1 / *bandwidth : 0.0},
                        {"decode_batch1_tokens_per_s_cublaslt_only", *batch1_cublaslt},
                        {"prefill_tokens", prompt},
                        {"prefill_tokens_per_s", prompt / prefill_s},
                        {"prefill_tflops", prefill_tflops},
                        {"prefill_stage_ms", prefill_stages},
                        {"prefill_chunk", chunk},
                        {"prefill_chunked_tokens_per_s", prompt / chunked_s},
                        {"decode_batch1_launched_step_ms", decode_launched_ms},
                        {"decode_batch1_launched_stage_ms", decode_stages},
                        {"prefill_seconds", prefill_s},
                        {"gemm_bf16_tflops", *gemm_tflops},
                        {"prefill_fraction_of_gemm", prefill_tflops / *gemm_tflops}};
  std::printf("%s\n", out.dump(2).c_str());
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace gemma

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return gemma::Run();
}
