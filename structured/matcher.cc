#include "structured/matcher.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace gemma::structured {

Matcher::Matcher(std::shared_ptr<Grammar> grammar) : grammar_(std::move(grammar)), state_(grammar_->pda().Initial()) {}

const TokenBitmask& Matcher::Allowed() {
  if (ended_) return grammar_->no_tokens();
  if (!mask_) mask_ = grammar_->Mask(state_);
  return *mask_;
}

bool Matcher::IsComplete() const { return !ended_ && grammar_->pda().CanEnd(state_); }

bool Matcher::AcceptsBytes(std::string_view bytes) const {
  return !ended_ && !grammar_->pda().Advance(state_, bytes).empty();
}

absl::Status Matcher::Accept(int32_t token) {
  const Vocabulary& vocab = grammar_->vocabulary();
  if (token < 0 || token >= vocab.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " is outside the vocabulary [0, ", vocab.size(), ")"));
  }
  if (ended_) return absl::InvalidArgumentError(absl::StrCat("token ", token, " after the output ended"));
  if (grammar_->IsEndId(token)) {
    if (!IsComplete()) {
      return absl::InvalidArgumentError(absl::StrCat("end token ", token, " before the JSON value is complete"));
    }
    ended_ = true;
    mask_.reset();
    return absl::OkStatus();
  }
  const std::string* bytes = vocab.bytes(token);
  if (bytes == nullptr || bytes->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " is a special token, never allowed in JSON output"));
  }
  State next = grammar_->pda().Advance(state_, *bytes);
  if (next.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " (\"", absl::CHexEscape(*bytes), "\") does not continue the JSON output here"));
  }
  state_ = std::move(next);
  mask_.reset();
  return absl::OkStatus();
}

}  // namespace gemma::structured
