// How far one set of next-token distributions lies from another (a quantized model's from bf16's, say).
#pragma once

#include <cstdint>

namespace gemma {

struct LogitsComparison {
  int rows = 0;
  double mean_kl = 0;           // mean over rows of KL(reference || other), in nats
  int top1_agreements = 0;      // rows whose most likely token is the same
  double max_logprob_change = 0;  // the largest |log p - log q| over every row and token
};

// `reference` and `other` are [rows, vocab] logits.
LogitsComparison CompareLogits(const float* reference, const float* other, int rows, int vocab);

}  // namespace gemma
