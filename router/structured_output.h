// Structured output for the router: a request's response_format turned into a token constraint the engine applies
// at every step. Compiled grammars are cached by format, so a schema many requests share is compiled once and its
// masks (cached per grammar state) serve them all.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/token_constraint.h"
#include "gemma/v1/gemma.pb.h"
#include "structured/grammar.h"
#include "tokenizer/tokenizer.h"

namespace gemma {

// Thread-safe.
class StructuredOutput {
 public:
  // `model_vocab`: the model's vocabulary size (masks are sized to it; the tokenizer's may be smaller).
  StructuredOutput(const Tokenizer* tokenizer, int model_vocab) : tokenizer_(tokenizer), model_vocab_(model_vocab) {}

  // Builds the vocabulary's byte trie now (a few hundred milliseconds for a 256k vocabulary) rather than on the
  // first structured request; an error is kept for the requests that need it.
  void Prepare() ABSL_LOCKS_EXCLUDED(mu_);

  // The vocabulary's bytes per token (null before Prepare, or if it failed): what logprobs report as token text.
  std::shared_ptr<const structured::Vocabulary> vocabulary() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return vocabulary_;
  }

  // Null for free text (no format, or type "text"). InvalidArgument naming the field, or the schema keyword and
  // where it is, for a format outside what is supported. `end_ids` end the output once the value is complete.
  absl::StatusOr<std::shared_ptr<TokenConstraint>> ConstraintFor(const v1::ResponseFormat& format,
                                                                 const std::vector<int32_t>& end_ids)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::StatusOr<std::shared_ptr<structured::Grammar>> GrammarFor(const v1::ResponseFormat& format,
                                                                  const std::vector<int32_t>& end_ids)
      ABSL_LOCKS_EXCLUDED(mu_);

  const Tokenizer* tokenizer_;
  const int model_vocab_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const structured::Vocabulary> vocabulary_ ABSL_GUARDED_BY(mu_);  // built at the first use
  // Most recently used first; bounded (each grammar holds its own mask cache).
  std::list<std::pair<std::string, std::shared_ptr<structured::Grammar>>> grammars_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma
