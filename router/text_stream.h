// Turns one request's generated ids into text deltas: whole UTF-8 characters only, and nothing that could still
// become a stop sequence; a matched stop sequence ends the text and never appears in it.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace gemma {

// Not thread-safe; one per request.
class TextStream {
 public:
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_sequences);
  // Adds a generated id; returns the text that is now final (possibly empty).
  absl::StatusOr<std::string> Add(int32_t id);
  // Whether a stop sequence has appeared (the text was cut before it).
  bool stopped() const { return stopped_; }
  // At the end: the held-back text (never a stop sequence).
  std::string Finish();
  const std::string& text() const { return emitted_; }

 private:
  StreamingDecoder decoder_;
  std::vector<std::string> stops_;
  std::string pending_;  // decoded but not yet emitted: could be the start of a stop sequence
  std::string emitted_;
  bool stopped_ = false;
};

}  // namespace gemma
