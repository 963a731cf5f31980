#include "tokenizer/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace gemma {

std::optional<ChatRoleError> CheckChatRoles(std::span<const std::string_view> roles, ChatStyle style) {
  const bool gemma3 = style == ChatStyle::kGemma3;
  size_t first = 0;
  if (gemma3 && !roles.empty() && roles[0] == "system") {
    if (roles.size() < 2) {
      return ChatRoleError{0, "a system message needs a user message after it, into whose turn Gemma 3 folds it"};
    }
    first = 1;
  }
  for (size_t i = first; i < roles.size(); ++i) {
    const std::string_view role = roles[i] == "assistant" ? "model" : roles[i];
    if (role != "user" && role != "model") {
      return ChatRoleError{i, absl::StrCat("allowed: user, assistant (or model)",
                                           gemma3 ? ", and system as the first message"
                                           : role == "system" ? " (this model's chat template has no system role)"
                                                              : "")};
    }
    const bool user_due = (i - first) % 2 == 0;
    if ((role == "user") != user_due) {
      return ChatRoleError{i, absl::StrCat(user_due ? "a user" : "an assistant (model)",
                                           " turn was due: the chat template takes turns alternating user, assistant, "
                                           "user, ... from ",
                                           first == 0 ? "the first message" : "the one after the system message")};
    }
  }
  return std::nullopt;
}

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, ChatStyle style) {
  if (messages.empty()) return absl::InvalidArgumentError("chat needs at least one message");
  std::vector<std::string_view> roles;
  for (const auto& m : messages) roles.push_back(m.role);
  if (auto e = CheckChatRoles(roles, style)) {
    return absl::InvalidArgumentError(
        absl::StrCat("message ", e->index, " (role \"", messages[e->index].role, "\"): ", e->why));
  }
  size_t first = 0;
  std::string system_prefix;
  if (style == ChatStyle::kGemma3 && messages[0].role == "system") {
    system_prefix = messages[0].content + "\n\n";
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const std::string role = messages[i].role == "assistant" ? "model" : messages[i].role;
    absl::StrAppend(&out, "<start_of_turn>", role, "\n", i == first ? system_prefix : "",
                    absl::StripAsciiWhitespace(messages[i].content), "<end_of_turn>\n");
  }
  absl::StrAppend(&out, "<start_of_turn>model\n");
  return out;
}

}  // namespace gemma
