#include "router/min_tokens_constraint.h"

#include "absl/strings/str_cat.h"

namespace gemma {

MinTokensConstraint::MinTokensConstraint(const std::vector<int32_t>& stops, int32_t min_tokens, int32_t vocab)
    : min_tokens_(min_tokens), mask_((static_cast<size_t>(vocab) + 31) / 32, ~0u) {
  // Ids past the vocabulary are never drawn: the last word's spare bits stay clear.
  if (vocab % 32 != 0) mask_.back() = (1u << (vocab % 32)) - 1;
  for (int32_t id : stops) {
    if (id >= 0 && id < vocab) mask_[static_cast<size_t>(id) / 32] &= ~(1u << (id % 32));
  }
}

absl::Status MinTokensConstraint::Accept(int32_t token) {
  const bool allowed = token >= 0 && static_cast<size_t>(token) / 32 < mask_.size() &&
                       ((mask_[static_cast<size_t>(token) / 32] >> (token % 32)) & 1u) != 0;
  if (generated_ < min_tokens_ && !allowed) {
    return absl::InternalError(absl::StrCat("token ", token, " ends the sequence before its min_new_tokens (",
                                            min_tokens_, ") and was masked"));
  }
  ++generated_;
  return absl::OkStatus();
}

std::shared_ptr<TokenConstraint> MinTokens(const std::vector<int32_t>& stops, int32_t min_tokens, int32_t vocab) {
  if (min_tokens <= 0 || stops.empty()) return nullptr;  // with nothing to hold back, a mask would only cost
  return std::make_shared<MinTokensConstraint>(stops, min_tokens, vocab);
}

}  // namespace gemma
