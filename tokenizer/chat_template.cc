#include "tokenizer/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("chat needs at least one message");
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    std::string role = messages[i].role;
    if (role == "assistant") role = "model";
    if (role != "user" && role != "model") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, ": unknown chat role \"", messages[i].role,
                                                     "\"; allowed: user, model, assistant"));
    }
    absl::StrAppend(&out, "<start_of_turn>", role, "\n", absl::StripAsciiWhitespace(messages[i].content),
                    "<end_of_turn>\n");
  }
  absl::StrAppend(&out, "<start_of_turn>model\n");
  return out;
}

}  // namespace gemma
