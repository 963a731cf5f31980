// A constraint on the tokens one sequence may generate (structured output): at each step, the set of tokens
// allowed next, as a bitmask the executor applies to the logits before drawing. The engine asks for the mask when
// it plans a sampling row and tells the constraint which token was drawn.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace gemma {

// One sequence's; not thread-safe (the engine's thread only).
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Bit t (word t / 32, bit t % 32) set: token t may come next. (vocab + 31) / 32 words; never all zero. The
  // reference stays valid until the next call to Allowed or Accept.
  virtual const std::vector<uint32_t>& Allowed() = 0;
  // The token drawn; an error when it was not allowed (the sequence then fails).
  virtual absl::Status Accept(int32_t token) = 0;
  // False once any token may come next for the rest of the sequence (a constraint on the first tokens only): the
  // engine then asks for no more masks, and the sequence's steps may overlap again.
  virtual bool Constrains() const { return true; }
};

// Whether `constraint` still limits what comes next (null: nothing does).
inline bool Constrains(const TokenConstraint* constraint) {
  return constraint != nullptr && constraint->Constrains();
}

}  // namespace gemma
