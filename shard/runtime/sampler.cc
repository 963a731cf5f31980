#include "shard/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

double LogSumExp(const float* logits, int vocab) {
  float m = -INFINITY;
  for (int i = 0; i < vocab; ++i) m = std::max(m, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - m);
  return m + std::log(sum);
}

}  // namespace

void ApplyPenalties(const SamplingParams& p, std::span<const int32_t> history, size_t prompt_len, float* logits,
                    int vocab) {
  if (!p.has_penalties()) return;
  for (const auto& [t, generated] : PenaltyCounts(history, prompt_len, vocab)) {
    float& l = logits[t];
    if (p.repetition_penalty != 1.0f) l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    if (generated > 0) l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(generated);
  }
}

std::vector<std::pair<int32_t, int>> PenaltyCounts(std::span<const int32_t> history, size_t prompt_len, int vocab) {
  prompt_len = std::min(prompt_len, history.size());
  // (token, generated occurrences); a token seen only in the prompt counts 0.
  std::vector<std::pair<int32_t, int>> counts;
  counts.reserve(history.size());
  for (size_t i = 0; i < history.size(); ++i) {
    if (history[i] >= 0 && history[i] < vocab) counts.emplace_back(history[i], i >= prompt_len ? 1 : 0);
  }
  std::sort(counts.begin(), counts.end());
  std::vector<std::pair<int32_t, int>> out;
  for (size_t i = 0; i < counts.size();) {
    const int32_t t = counts[i].first;
    int generated = 0;
    for (; i < counts.size() && counts[i].first == t; ++i) generated += counts[i].second;
    out.emplace_back(t, generated);
  }
  return out;
}

void ApplyTokenMask(std::span<const uint32_t> allowed, float* logits, int vocab) {
  for (int t = 0; t < vocab; ++t) {
    if (((allowed[t >> 5] >> (t & 31)) & 1u) == 0) logits[t] = -std::numeric_limits<float>::infinity();
  }
}

absl::Status ValidateTokenMask(std::span<const uint32_t> allowed, int vocab) {
  const size_t words = (static_cast<size_t>(vocab) + 31) / 32;
  if (allowed.size() != words) {
    return absl::InvalidArgumentError(absl::StrCat("allowed_tokens has ", allowed.size(), " words; a vocabulary of ",
                                                   vocab, " needs ", words));
  }
  for (size_t w = 0; w < words; ++w) {
    const int bits = std::min(32, vocab - static_cast<int>(w * 32));
    const uint32_t in_vocab = bits == 32 ? ~0u : ((1u << bits) - 1u);
    if ((allowed[w] & in_vocab) != 0) return absl::OkStatus();
  }
  return absl::InvalidArgumentError("allowed_tokens allows no token of the vocabulary");
}

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature ", p.temperature, " is invalid; allowed: a finite value >= 0"));
  }
  if (p.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k ", p.top_k, " is invalid; allowed: >= 0 (0 = no limit)"));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", p.top_p, " is invalid; allowed: (0, 1]"));
  }
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty ", p.repetition_penalty,
                                                   " is invalid; allowed: > 0 (1 = none)"));
  }
  for (auto [v, name] : {std::pair{p.presence_penalty, "presence_penalty"}, {p.frequency_penalty, "frequency_penalty"}}) {
    if (!(v >= -2.0f && v <= 2.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " ", v, " is invalid; allowed: [-2, 2]"));
    }
  }
  return absl::OkStatus();
}

double LogProbOf(const float* logits, int vocab, int id) {
  return static_cast<double>(logits[id]) - LogSumExp(logits, vocab);
}

std::vector<std::pair<int, double>> TopLogProbs(const float* logits, int vocab, int n) {
  n = std::clamp(n, 0, vocab);
  if (n == 0) return {};  // asked of every draw: nothing to sort or sum
  std::vector<int> ids(vocab);
  for (int i = 0; i < vocab; ++i) ids[i] = i;
  auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), better);
  const double lse = LogSumExp(logits, vocab);
  std::vector<std::pair<int, double>> out;
  for (int i = 0; i < n; ++i) out.emplace_back(ids[i], logits[ids[i]] - lse);
  return out;
}

int Argmax(const float* logits, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  uint64_t s = params.seed;
  for (auto& x : state_) x = SplitMix64(s);
}

double Sampler::NextUniform() {
  // xoshiro256**: a fixed, documented generator so a seed means the same draws everywhere.
  const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = Rotl(state_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

int SampleAt(const SamplingParams& params, int64_t position, const float* logits, int vocab) {
  if (params.temperature == 0.0f) return Argmax(logits, vocab);
  SamplingParams p = params;
  uint64_t mix = params.seed ^ (static_cast<uint64_t>(position) * 0xd1b54a32d192ed03ull);
  p.seed = SplitMix64(mix);
  return Sampler(p).Sample(logits, vocab);
}

int Sampler::Sample(const float* logits, int vocab) {
  if (params_.temperature == 0.0f) return Argmax(logits, vocab);
  candidates_.resize(vocab);
  for (int i = 0; i < vocab; ++i) candidates_[i] = {logits[i] / params_.temperature, i};
  auto better = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    n = params_.top_k;
    std::nth_element(candidates_.begin(), candidates_.begin() + n - 1, candidates_.end(), better);
  }
  std::sort(candidates_.begin(), candidates_.begin() + n, better);
  const double m = candidates_[0].first;
  std::vector<double> probs(n);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += probs[i] = std::exp(candidates_[i].first - m);
  if (params_.top_p < 1.0f) {
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    double cum = 0.0;
    size_t keep = 0;
    while (keep < n) {
      cum += probs[keep++] / total;
      if (cum >= params_.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += probs[i];
  }
  const double u = NextUniform() * total;
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += probs[i];
    if (u < cum) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace gemma
