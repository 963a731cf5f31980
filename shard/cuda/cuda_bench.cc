// gemma-cuda-bench: the CUDA backend's speed on one GPU, beside the device's own limits measured in the same run:
// decode tokens/s at several batch sizes over a fixed context, batch-1 decode as a share of the device's memory
// bandwidth, and prefill tokens/s with the TFLOP/s it reaches against a plain cuBLASLt bf16 GEMM.
// Needs no gRPC and no tokenizer, so it builds wherever shard/ does.
//
// usage: gemma-cuda-bench --model DIR [--make_7b | --make_shape gemma3-27b] [--batches 1,16,64] [--context 512]
//                         [--steps 32] [--prompt 2048] [--prefill_chunk 512] [--long_context 32768]
//                         [--sections variants,gemm_sweep,plan,tp2,lora] [--lora_batch 32] [--lora_adapters 8]
//                         [--lora_rank 16] [--weights int8,int4,fp8] [--json FILE]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/cuda/cuda_backend.h"
#include "shard/cuda/cuda_bench_decode.h"
#include "shard/cuda/cuda_bench_lora.h"
#include "shard/cuda/cuda_bench_parts.h"
#include "shard/cuda/cuda_bench_weights.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/gemm.h"
#include "shard/checkpoint/progress.h"
#include "shard/model/published_shapes.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(bool, make_7b, false, "first write a random-weight Gemma 7B-shape bf16 checkpoint into --model (if absent)");
ABSL_FLAG(std::string, make_shape, "",
          "first write a random-weight bf16 checkpoint of this published shape into --model (if absent): gemma-2b, "
          "gemma-7b, gemma2-2b, gemma2-9b, gemma2-27b, gemma3-1b, gemma3-4b, gemma3-12b, gemma3-27b");
ABSL_FLAG(int, long_context, 0,
          "also decode one sequence at this context, with the model's sliding windows and with every layer global "
          "(0: not)");
ABSL_FLAG(std::string, sections, "variants,gemm_sweep,plan,tp2",
          "the optional sections to run beside decode and prefill: variants, gemm_sweep, plan, tp2, lora, weights");
ABSL_FLAG(std::string, weights, "int8,int4,fp8", "weights section: the formats the checkpoint is quantized to at load");
ABSL_FLAG(int, lora_batch, 32, "lora section: decoding sequences, spread over the adapters");
ABSL_FLAG(int, lora_adapters, 8, "lora section: random adapters on all seven projections (at most the backend's slots)");
ABSL_FLAG(int, lora_rank, 16, "lora section: their rank (at most the backend's slot rank, 16 by default)");
ABSL_FLAG(std::string, batches, "1,2,4,8,16,64", "decode batch sizes");
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

// The tokens/s of batch `batch` in a decode sweep's rows; 0 where it was not measured.
double TokensPerSecondAt(const nlohmann::json& rows, int batch) {
  for (const auto& d : rows) {
    if (d["batch"] == batch) return d["tokens_per_s"];
  }
  return 0;
}

absl::StatusOr<ModelConfig> PublishedShape(const std::string& name) {
  if (name == "gemma-2b") return Gemma2BShape();
  if (name == "gemma-7b") return Gemma7BShape();
  std::string known = "gemma-2b, gemma-7b";
  for (const auto& [n, config] : PublishedGemma23Shapes()) {
    if (n == name) return config;
    known += ", " + n;
  }
  return absl::InvalidArgumentError(absl::StrCat("--make_shape ", name, " is no published shape; allowed: ", known));
}

// The checkpoint at `dir` with every layer global, beside it (the weights linked, config.json rewritten): the same
// model without its sliding windows, for the long-context comparison.
absl::StatusOr<std::string> FullAttentionCopy(const std::string& dir, const ModelConfig& c) {
  const std::string out = dir + "-full-attention";
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", out, ": ", ec.message()));
  std::ifstream in(dir + "/config.json");
  if (!in) return absl::NotFoundError(dir + "/config.json cannot be read");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return absl::InvalidArgumentError(dir + "/config.json is not JSON");
  nlohmann::json& text = j.contains("text_config") ? j["text_config"] : j;
  text["layer_types"] = std::vector<std::string>(c.num_layers, "full_attention");
  text.erase("sliding_window_pattern");
  j.erase("sliding_window_pattern");
  std::ofstream config(out + "/config.json");
  config << j.dump(2) << "\n";
  if (!config.flush()) return absl::InternalError(absl::StrCat("writing ", out, "/config.json"));
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name == "config.json") continue;
    std::filesystem::remove(out + "/" + name, ec);  // a link left by an earlier run, dangling or not
    std::filesystem::create_symlink(std::filesystem::absolute(entry.path()), out + "/" + name, ec);
    if (ec) return absl::InternalError(absl::StrCat("linking ", name, " into ", out, ": ", ec.message()));
  }
  return out;
}

int Run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return Fail(absl::InvalidArgumentError("--model DIR is required"));
  std::string make = absl::GetFlag(FLAGS_make_shape);
  if (make.empty() && absl::GetFlag(FLAGS_make_7b)) make = "gemma-7b";
  if (!make.empty() && !std::filesystem::exists(dir + "/config.json")) {
    auto shape = PublishedShape(make);
    if (!shape.ok()) return Fail(shape.status());
    std::fprintf(stderr, "writing a random %s-shape checkpoint to %s\n", make.c_str(), dir.c_str());
    RandomCheckpointOptions options;
    options.drop_from_page_cache = false;  // read back at once, by this bench and by the baseline after it
    if (auto s = WriteRandomCheckpoint(dir, *shape, options, ""); !s.ok()) return Fail(s);
  }
  const std::string sections = absl::StrCat(",", absl::GetFlag(FLAGS_sections), ",");
  auto wants = [&](const char* section) { return sections.find(absl::StrCat(",", section, ",")) != std::string::npos; };
  const int long_context = absl::GetFlag(FLAGS_long_context);
  if (long_context < 0) return Fail(absl::InvalidArgumentError("--long_context must be 0 or positive"));
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',', absl::SkipEmpty())) {
    int v;
    if (!absl::SimpleAtoi(b, &v) || v < 1) return Fail(absl::InvalidArgumentError("--batches: positive integers"));
    batches.push_back(v);
  }
  const int context = absl::GetFlag(FLAGS_context), steps = absl::GetFlag(FLAGS_steps), prompt = absl::GetFlag(FLAGS_prompt);
  if (batches.empty() || context < 1 || steps < 1 || prompt < 1) {
    return Fail(absl::InvalidArgumentError("--batches needs a batch size; --context, --steps and --prompt at least 1"));
  }
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return Fail(ckpt.status());
  const std::shared_ptr<const Checkpoint> checkpoint(std::move(*ckpt));
  auto weights = ModelWeights::Load(checkpoint);
  if (!weights.ok()) return Fail(weights.status());
  std::shared_ptr<const ModelWeights> w(std::move(*weights));
  const ModelConfig& c = w->config();
  const int lora_batch = absl::GetFlag(FLAGS_lora_batch);
  if (wants("lora") && lora_batch < 1) return Fail(absl::InvalidArgumentError("--lora_batch must be positive"));
  const int max_batch = std::max(*std::max_element(batches.begin(), batches.end()), wants("lora") ? lora_batch : 0);
  const int64_t per_seq = context + steps + 16;
  KvCacheOptions kv;
  kv.num_blocks = static_cast<int>((max_batch * per_seq + prompt) / kv.block_size + max_batch + 2);
  const int long_blocks = (long_context + steps + 16) / kv.block_size + 1;
  kv.num_blocks = std::max(kv.num_blocks, static_cast<int>(prompt / kv.block_size + 1) + long_blocks + 2);
  CudaBackendOptions options;
  if (wants("lora")) options.lora_slots = std::max(8, absl::GetFlag(FLAGS_lora_adapters));
  options.stage_timing = true;  // steps launched one kernel at a time report device time per stage
  // Later sections record their failures and go on, so that one run on a lent GPU reports all it can.
  nlohmann::json errors = nlohmann::json::object();
  auto made = CreateCudaBackend(w, kv, options);
  if (!made.ok()) {
    errors["default_backend"] = std::string(made.status().message());
    std::fprintf(stderr, "gemma-cuda-bench: the default backend failed (%s); measuring without the newer kernels\n",
                 std::string(made.status().message()).c_str());
    options.programmatic_launch = false;
    made = CreateCudaBackend(w, kv, options);
  }
  if (!made.ok()) return Fail(made.status());
  Backend& backend = **made;  // reset before the variants below
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

  // The floor of a decode step: every weight and every sequence's cached keys and values read once (at the sweep's
  // mean context), at the copy bandwidth.
  const double weight_bytes = static_cast<double>(w->WeightBytesPerStep());
  const double kv_bytes_per_position = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 2;
  auto floor_ms = [&](int b) {
    return 1000 * (weight_bytes + b * (context + steps / 2.0 + 2) * kv_bytes_per_position) / *bandwidth;
  };
  const int first_block = static_cast<int>(prompt_blocks.size());
  const int blocks_per_sequence = static_cast<int>(per_seq / kv.block_size + 1);
  auto sweep = [&](Backend& b, int sweep_steps) -> absl::StatusOr<nlohmann::json> {
    nlohmann::json rows = nlohmann::json::array();
    for (int batch : batches) {
      auto r = Decode(b, batch, context, sweep_steps, first_block, blocks_per_sequence);
      if (!r.ok()) return r.status();
      const double step_ms = 1000.0 * batch / r->tokens_per_s;
      rows.push_back({{"batch", batch}, {"tokens_per_s", r->tokens_per_s}, {"step_ms", step_ms},
                      {"floor_ms", floor_ms(batch)}, {"floor_fraction", floor_ms(batch) / step_ms},
                      {"launched_step_ms", r->launched_step_ms}, {"launched_stage_ms", r->launched_stages}});
    }
    return rows;
  };
  auto decode_or = sweep(backend, steps);
  if (!decode_or.ok()) return Fail(decode_or.status());
  const nlohmann::json decode = *decode_or;
  double batch1 = 0;
  nlohmann::json batch1_stages;
  double batch1_launched_ms = 0;
  for (const auto& d : decode) {
    if (d["batch"] == 1) {
      batch1 = d["tokens_per_s"];
      batch1_stages = d["launched_stage_ms"];
      batch1_launched_ms = d["launched_step_ms"];
    }
  }
  // Rows of several adapters against the base model, on the same backend in the same run.
  nlohmann::json lora;
  if (wants("lora")) {
    auto r = LoraDecodeAgainstBase(backend, lora_batch, absl::GetFlag(FLAGS_lora_adapters),
                                   absl::GetFlag(FLAGS_lora_rank), context, steps, first_block, blocks_per_sequence);
    if (r.ok()) {
      lora = *r;
    } else {
      errors["lora"] = std::string(r.status().message());
    }
  }
  // One sequence at a long context: the model as it is (local layers read their window of the cache) and then,
  // below, with every layer global. Its floor: the weights and the cache rows each layer reads.
  nlohmann::json long_context_json;
  auto long_decode = [&](Backend& b, const ModelConfig& m) -> nlohmann::json {
    auto r = Decode(b, 1, long_context, steps, first_block, long_blocks);
    if (!r.ok()) return {{"error", std::string(r.status().message())}};
    double kv_read = 0;
    for (int layer = 0; layer < m.num_layers; ++layer) {
      const double mean_context = long_context + steps / 2.0 + 2;  // as the sweep's floor counts it
      const double seen = m.IsLocal(layer) ? std::min<double>(mean_context, m.sliding_window) : mean_context;
      kv_read += seen * 2.0 * m.num_kv_heads * m.head_dim * 2;
    }
    const double step_ms = 1000.0 / r->tokens_per_s;
    const double floor = 1000 * (weight_bytes + kv_read) / *bandwidth;
    return {{"tokens_per_s", r->tokens_per_s}, {"step_ms", step_ms}, {"kv_bytes_read", kv_read},
            {"floor_ms", floor}, {"floor_fraction", floor / step_ms}, {"launched_stage_ms", r->launched_stages}};
  };
  if (long_context > 0) {
    long_context_json = {{"context", long_context}, {"windowed", long_decode(backend, c)}};
  }
  made->reset();
  if (long_context > 0) {
    auto full_dir = FullAttentionCopy(dir, c);
    auto full_ckpt = full_dir.ok() ? Checkpoint::Open(*full_dir) : absl::StatusOr<std::unique_ptr<Checkpoint>>(full_dir.status());
    auto full_w = full_ckpt.ok() ? ModelWeights::Load(std::shared_ptr<const Checkpoint>(std::move(*full_ckpt)))
                                 : absl::StatusOr<std::unique_ptr<ModelWeights>>(full_ckpt.status());
    if (!full_w.ok()) {
      long_context_json["full_attention"] = {{"error", std::string(full_w.status().message())}};
    } else {
      std::shared_ptr<const ModelWeights> fw(std::move(*full_w));
      auto fb = CreateCudaBackend(fw, kv, options);
      long_context_json["full_attention"] =
          fb.ok() ? long_decode(**fb, fw->config()) : nlohmann::json{{"error", std::string(fb.status().message())}};
    }
  }

  // The same sweep with other kernel choices, each its own backend over the same weights.
  struct Variant {
    const char* name;
    CudaBackendOptions options;
  };
  std::vector<Variant> variants;  // each with stage timing, like the default run's launched steps
  variants.push_back({"no_programmatic_launch", {}});
  variants.back().options.programmatic_launch = false;
  variants.push_back({"batch_invariant", {}});
  variants.back().options.batch_invariant = true;
  variants.push_back({"register_staged_attention", {}});
  variants.back().options.streamed_attention = false;
  variants.push_back({"cublaslt_only", {}});
  variants.back().options.cublaslt_only = true;
  if (!wants("variants")) variants.clear();
  nlohmann::json variant_results = nlohmann::json::object();
  double batch1_cublaslt = 0;
  {
    Progress progress("decode sweep of kernel variants", static_cast<int64_t>(variants.size()));
    int done = 0;
    for (const Variant& v : variants) {
      CudaBackendOptions with_stages = v.options;
      with_stages.stage_timing = true;
      auto b = CreateCudaBackend(w, kv, with_stages);
      auto rows = b.ok() ? sweep(**b, std::max(8, steps / 2)) : absl::StatusOr<nlohmann::json>(b.status());
      progress.Update(++done);
      if (!rows.ok()) {
        errors[std::string("variant ") + v.name] = std::string(rows.status().message());
        continue;
      }
      variant_results[v.name] = *rows;
      if (std::string(v.name) == "cublaslt_only") batch1_cublaslt = TokensPerSecondAt(*rows, 1);
    }
    progress.Finish();
  }

  auto gemm_sweep = wants("gemm_sweep") ? DecodeGemmSweep(c, *bandwidth)
                                          : absl::StatusOr<nlohmann::json>(nlohmann::json::array());
  if (!gemm_sweep.ok()) errors["decode_gemm_sweep"] = std::string(gemm_sweep.status().message());

  // Memory planned as the worker plans it by default: the cache from 90% of the device after the largest step
  // (the default limits); then that step at once, on a full device.
  nlohmann::json planned;
  if (wants("plan")) {
    KvCacheOptions plan_kv;
    plan_kv.memory_fraction = 0.9;
    const auto plan_start = Clock::now();
    auto b = CreateCudaBackend(w, plan_kv, {});
    const double start_s = Since(plan_start);
    auto report = b.ok() ? CudaMemoryReportOf(**b) : absl::StatusOr<CudaMemoryReport>(b.status());
    if (!report.ok()) errors["planned_memory"] = std::string(report.status().message());
    if (report.ok()) {
      const StepLimits& l = report->limits;
      const int tokens = std::min(l.max_tokens, l.max_context);
      const auto ids = Tokens(tokens, c.vocab_size, 3);
      std::vector<int32_t> table((l.max_context + 15) / 16);
      for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
      SequenceStep largest{ids, l.max_context - tokens, table, LogitsWanted::kAll};
      const absl::Status ran = (*b)->ForwardAndSample({&largest, 1}, Greedy(1), false, &logits, &drawn);
      planned = {{"gpu_memory_fraction", 0.9}, {"total_bytes", report->total}, {"weights_bytes", report->weights},
                 {"step_buffer_bytes", report->step_buffers}, {"lora_adapter_bytes", report->adapters},
                 {"used_before_kv_bytes", report->used_before_kv},
                 {"kv_bytes", report->kv}, {"kv_blocks", report->kv_blocks}, {"kv_tokens", report->kv_blocks * 16},
                 {"max_tokens_per_step", l.max_tokens}, {"max_batch_size", l.max_sequences},
                 {"max_model_len", l.max_context}, {"start_seconds", start_s},
                 {"largest_step_right_after_start", ran.ok() ? "ok" : std::string(ran.message())}};
    }
  }

  // The checkpoint quantized at load, decoding at the same batch sizes.
  nlohmann::json quantized = nlohmann::json::array();
  if (wants("weights")) {
    QuantizedDecodeSetup q;
    q.kv = kv;
    q.options = options;
    q.options.lora_slots = 0;
    q.batches = batches;
    q.context = context;
    q.steps = steps;
    q.first_block = first_block;
    q.blocks_per_sequence = blocks_per_sequence;
    q.bandwidth = *bandwidth;
    q.kv_bytes_per_position = kv_bytes_per_position;
    std::vector<std::string> formats = absl::StrSplit(absl::GetFlag(FLAGS_weights), ',', absl::SkipEmpty());
    quantized = QuantizedDecode(checkpoint, q, formats);
  }

  // Two ranks sharing this GPU over a host collective (every all-reduce through host memory), against one rank.
  // Steps are launched kernel by kernel: the ranks are threads of this process here, and a graph's host-collective
  // sum waits in a host function for the other rank's, which the runtime may run on the same thread.
  nlohmann::json tp2 = nlohmann::json::array();
  for (int b : {1, 16}) {
    if (!wants("tp2")) break;
    auto tps = TensorParallelTwoDecode(checkpoint, kv, b, context, std::max(8, steps / 2));
    if (!tps.ok()) {
      errors[absl::StrCat("tp2 batch ", b)] = std::string(tps.status().message());
      continue;
    }
    const double tp1 = TokensPerSecondAt(decode, b);
    tp2.push_back({{"batch", b}, {"graphs", false}, {"tokens_per_s", *tps}, {"step_ms", 1000.0 * b / *tps},
                   {"tp1_step_ms", tp1 > 0 ? 1000.0 * b / tp1 : 0.0}});
  }

  nlohmann::json out = {{"gpu", prop.name},
                        {"model", c.DebugString()},
                        {"weight_bytes_per_step", weight_bytes},
                        {"device_bandwidth_bytes_per_s", *bandwidth},
                        {"decode_context", context},
                        {"decode", decode},
                        {"decode_batch1_bandwidth_fraction", batch1 > 0 ? weight_bytes * batch1 / *bandwidth : 0.0},
                        {"decode_batch1_tokens_per_s_cublaslt_only", batch1_cublaslt},
                        {"decode_variants", variant_results},
                        {"decode_gemm_sweep", gemm_sweep.ok() ? *gemm_sweep : nlohmann::json::array()},
                        {"errors", errors},
                        {"planned_memory", planned},
                        {"tp2_one_gpu_host_collective", tp2},
                        {"lora_decode", lora},
                        {"quantized_decode", quantized},
                        {"long_context", long_context_json},
                        {"prefill_tokens", prompt},
                        {"prefill_tokens_per_s", prompt / prefill_s},
                        {"prefill_tflops", prefill_tflops},
                        {"prefill_stage_ms", prefill_stages},
                        {"prefill_chunk", chunk},
                        {"prefill_chunked_tokens_per_s", prompt / chunked_s},
                        {"decode_batch1_launched_step_ms", batch1_launched_ms},
                        {"decode_batch1_launched_stage_ms", batch1_stages},
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
