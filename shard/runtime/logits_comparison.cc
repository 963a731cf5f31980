#include "shard/runtime/logits_comparison.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gemma {
namespace {

void LogSoftmax(const float* logits, int n, std::vector<double>* out) {
  out->resize(n);
  const double max = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(logits[i] - max);
  const double log_sum = max + std::log(sum);
  for (int i = 0; i < n; ++i) (*out)[i] = logits[i] - log_sum;
}

}  // namespace

LogitsComparison CompareLogits(const float* reference, const float* other, int rows, int vocab) {
  LogitsComparison c;
  c.rows = rows;
  std::vector<double> p, q;
  for (int r = 0; r < rows; ++r) {
    LogSoftmax(reference + static_cast<int64_t>(r) * vocab, vocab, &p);
    LogSoftmax(other + static_cast<int64_t>(r) * vocab, vocab, &q);
    double kl = 0;
    for (int i = 0; i < vocab; ++i) {
      kl += std::exp(p[i]) * (p[i] - q[i]);
      c.max_logprob_change = std::max(c.max_logprob_change, std::abs(p[i] - q[i]));
    }
    c.mean_kl += kl;
    c.top1_agreements += std::max_element(p.begin(), p.end()) == p.begin() + (std::max_element(q.begin(), q.end()) - q.begin());
  }
  if (rows > 0) c.mean_kl /= rows;
  return c;
}

}  // namespace gemma
