#include "tokenizer/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, ChatStyle style) {
  if (messages.empty()) return absl::InvalidArgumentError("chat needs at least one message");
  size_t first = 0;
  std::string system_prefix;
  if (style == ChatStyle::kGemma3 && messages[0].role == "system") {
    if (messages.size() < 2 || messages[1].role != "user") {
      return absl::InvalidArgumentError(
          "message 0: a system message must be followed by a user message, into whose turn Gemma 3 folds it");
    }
    system_prefix = messages[0].content + "\n\n";
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    std::string role = messages[i].role;
    if (role == "assistant") role = "model";
    if (role != "user" && role != "model") {
      const bool system = role == "system";
      return absl::InvalidArgumentError(absl::StrCat(
          "message ", i, ": unknown chat role \"", messages[i].role, "\"; allowed: user, model, assistant",
          style == ChatStyle::kGemma3 ? " (system only as the first message)"
                                      : (system ? " (this model's template has no system role)" : "")));
    }
    absl::StrAppend(&out, "<start_of_turn>", role, "\n", i == first ? system_prefix : "",
                    absl::StripAsciiWhitespace(messages[i].content), "<end_of_turn>\n");
  }
  absl::StrAppend(&out, "<start_of_turn>model\n");
  return out;
}

}  // namespace gemma
