// One sequence's place in a Grammar: the tokens allowed next, and advancing by the sampled one.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "structured/grammar.h"
#include "structured/pda.h"
#include "structured/token_bitmask.h"

namespace gemma::structured {

// Not thread-safe; copyable (parallel samples fork it). Copies share the Grammar and its mask cache.
class Matcher {
 public:
  explicit Matcher(std::shared_ptr<Grammar> grammar);

  // The tokens allowed next: every token whose bytes continue the output validly (a token may span several JSON
  // syntax elements), plus the end ids exactly when the output is a complete value. Never empty while !Ended()
  // for a vocabulary with byte-fallback pieces (Gemma's). Cached in the Grammar per state: a repeated state costs
  // a hash lookup. Valid until the next Accept; no tokens once Ended().
  const TokenBitmask& Allowed();
  // Advances by the sampled token; InvalidArgument (naming the token) when it was not allowed.
  absl::Status Accept(int32_t token);
  // An end id was accepted.
  bool Ended() const { return ended_; }

  // The output so far is a complete value (an end id is allowed).
  bool IsComplete() const;
  // Whether `bytes` would continue the output validly, fed one byte at a time (slow; tests and debugging).
  bool AcceptsBytes(std::string_view bytes) const;

 private:
  std::shared_ptr<Grammar> grammar_;
  State state_;
  bool ended_ = false;
  std::shared_ptr<const TokenBitmask> mask_;  // state_'s, once asked for
};

}  // namespace gemma::structured
