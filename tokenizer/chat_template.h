// Gemma's instruction-tuned chat templates (as in the Hub's tokenizer_config.json of each family).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

struct ChatMessage {
  std::string role;  // "user" or "model" ("assistant" is accepted as "model"); "system" first, for Gemma 3
  std::string content;
};

// Which template: Gemma 1 and 2 have no system role; Gemma 3's folds a leading system message into the first user
// turn ("{system}\n\n{user}", the system text untrimmed, as its Jinja template writes it).
enum class ChatStyle { kGemma, kGemma3 };

// "<start_of_turn>{role}\n{content, trimmed}<end_of_turn>\n" per message, then
// "<start_of_turn>model\n". No <bos>: callers prepend its id. InvalidArgument
// for an empty list, a role other than user/model/assistant (and, for Gemma 3, a leading system message that a
// user message follows).
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, ChatStyle style = ChatStyle::kGemma);

}  // namespace gemma
