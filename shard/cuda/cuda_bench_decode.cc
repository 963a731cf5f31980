#include "shard/cuda/cuda_bench_decode.h"

#include <algorithm>
#include <chrono>

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

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

absl::StatusOr<DecodeResult> Decode(Backend& backend, int batch, int context, int steps, int first_block,
                                    int blocks_per_sequence, std::span<const LoraAdapter* const> adapters) {
  auto adapter_of = [&](int s) { return adapters.empty() ? nullptr : adapters[s % adapters.size()]; };
  const int vocab = backend.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts, tables;
  for (int s = 0; s < batch; ++s) {
    prompts.push_back(Tokens(context, vocab, 100 + s));
    tables.push_back(SequenceTable(first_block, blocks_per_sequence, s));
  }
  // Each prompt in its own step: a batch of whole prompts would pass the step limits.
  std::vector<SequenceStep> step(batch);
  const std::vector<RowSample> rows = Greedy(batch);
  StepLogits logits;
  std::vector<SampledToken> drawn;
  // Long contexts in chunks, as the server schedules them (a step holds at most the default 2048 tokens).
  constexpr int kChunk = 2048;
  for (int s = 0; s < batch; ++s) {
    for (int begin = 0; begin < context; begin += kChunk) {
      const int n = std::min(kChunk, context - begin);
      const bool last = begin + n == context;
      SequenceStep prompt{std::span<const int32_t>(prompts[s]).subspan(begin, n), begin, tables[s],
                          last ? LogitsWanted::kLast : LogitsWanted::kNone};
      prompt.adapter = adapter_of(s);
      const std::vector<RowSample> rows = last ? Greedy(1) : std::vector<RowSample>{};
      if (auto st = backend.ForwardAndSample({&prompt, 1}, rows, false, &logits, &drawn); !st.ok()) return st;
    }
  }
  std::vector<int32_t> next(batch, 5);
  double elapsed = 0;
  for (int i = 0; i <= steps + 1; ++i) {
    for (int s = 0; s < batch; ++s) {
      step[s] = {{&next[s], 1}, context + i, tables[s], LogitsWanted::kLast};
      step[s].adapter = adapter_of(s);
    }
    const auto start = Clock::now();
    if (auto st = backend.ForwardAndSample(step, rows, false, &logits, &drawn); !st.ok()) return st;
    for (int s = 0; s < batch; ++s) next[s] = drawn[s].token;
    if (i > 1) elapsed += Since(start);
  }
  DecodeResult r;
  r.tokens_per_s = batch * steps / elapsed;
  // Every row's logits: a step no graph takes, so the stages are clocked.
  for (int s = 0; s < batch; ++s) {
    step[s] = {{&next[s], 1}, context + steps + 2, tables[s], LogitsWanted::kAll};
    step[s].adapter = adapter_of(s);
  }
  for (int i = 0; i < 2; ++i) {
    const auto start = Clock::now();
    if (auto st = backend.ForwardAndSample(step, rows, false, &logits, &drawn); !st.ok()) return st;
    r.launched_step_ms = 1000 * Since(start);
  }
  r.launched_stages = StageMilliseconds(backend.last_timings());
  return r;
}


}  // namespace gemma
