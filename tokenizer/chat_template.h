// Gemma's instruction-tuned chat template (as in the Hub's tokenizer_config.json).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

struct ChatMessage {
  std::string role;  // "user" or "model" ("assistant" is accepted as "model")
  std::string content;
};

// "<start_of_turn>{role}\n{content, trimmed}<end_of_turn>\n" per message, then
// "<start_of_turn>model\n". No <bos>: callers prepend its id. InvalidArgument
// for an empty list or a role other than user/model/assistant (Gemma has no system role).
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages);

}  // namespace gemma
