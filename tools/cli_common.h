// What several subcommands share: the one-line error exit, flag groups for model and prompt.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"
#include "tools/args.h"

namespace gemma {

// Prints "gemma CMD: message" to stderr; returns the exit code (2 for bad input, 1 otherwise).
int Fail(const char* command, const absl::Status& status);

// Parses flags; on --help prints usage and sets *exit_code to 0; on error sets it to 2.
bool ParseOrExit(Args& args, int argc, char** argv, const char* command, int* exit_code);

// --int4-group-size, `fallback` when not given; 0 (with `zero_chooses`) lets the loader pick.
absl::StatusOr<int> Int4GroupSizeFlag(const Args& args, int fallback, bool zero_chooses);

// --prompt (with <bos> prepended; chat-templated when `chat`) or --prompt-ids (as given), exactly one.
absl::StatusOr<std::vector<int32_t>> PromptIds(const Args& args, const Tokenizer* tokenizer, int vocab_size, int bos_id,
                                               bool chat);

}  // namespace gemma
