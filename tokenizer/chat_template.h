// Gemma's instruction-tuned chat templates (as in the Hub's tokenizer_config.json of each family).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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

// The first message whose role the template refuses, and why (the role itself left for the caller to name, as
// its API spells it).
struct ChatRoleError {
  size_t index;
  std::string why;
};

// What every Gemma template requires, as their Jinja raises it: user and model (or assistant) turns alternating
// from a user turn; for Gemma 3 also one system message first, with a user turn after it to fold into. Every entry
// point checks roles with this, so the API, the CLI and the renderer refuse alike.
std::optional<ChatRoleError> CheckChatRoles(std::span<const std::string_view> roles, ChatStyle style);

// "<start_of_turn>{role}\n{content, trimmed}<end_of_turn>\n" per message, then
// "<start_of_turn>model\n". No <bos>: callers prepend its id. InvalidArgument for an empty list or roles that
// CheckChatRoles refuses.
absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, ChatStyle style = ChatStyle::kGemma);

}  // namespace gemma
