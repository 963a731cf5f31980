// The embedded default model: the compiled-in tokenizer and a tiny random checkpoint made on first use.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace gemma {

// Bytes of the embedded tokenizer.model.
std::string EmbeddedTokenizerBytes();
// Directory of the default checkpoint, written there (atomically) if missing.
absl::StatusOr<std::string> EnsureDefaultModel();

}  // namespace gemma
