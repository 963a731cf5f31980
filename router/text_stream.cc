#include "router/text_stream.h"

#include <algorithm>

#include "engine/status_macros.h"

namespace gemma {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_sequences)
    : decoder_(tokenizer), stops_(std::move(stop_sequences)) {}

absl::StatusOr<std::string> TextStream::Add(int32_t id) {
  if (stopped_) return std::string();
  ASSIGN_OR_RETURN(const std::string delta, decoder_.Add(id));
  pending_ += delta;
  // A complete stop sequence: emit what precedes it, drop the rest.
  size_t cut = std::string::npos;
  for (const auto& stop : stops_) cut = std::min(cut, pending_.find(stop));
  if (cut != std::string::npos) {
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    stopped_ = true;
    emitted_ += out;
    return out;
  }
  // Hold back the longest suffix that is a prefix of some stop sequence.
  size_t hold = 0;
  for (const auto& stop : stops_) {
    for (size_t len = std::min(stop.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  emitted_ += out;
  return out;
}

std::string TextStream::Finish() {
  if (stopped_) return std::string();
  auto tail = decoder_.Flush();
  if (tail.ok()) pending_ += *tail;
  std::string out = std::move(pending_);
  pending_.clear();
  emitted_ += out;
  return out;
}

}  // namespace gemma
