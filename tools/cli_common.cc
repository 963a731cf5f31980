#include "tools/cli_common.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/model/quantize.h"
#include "tokenizer/chat_template.h"

namespace gemma {

int Fail(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "gemma %s: %s\n", command, std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument || status.code() == absl::StatusCode::kNotFound ? 2 : 1;
}

bool ParseOrExit(Args& args, int argc, char** argv, const char* command, int* exit_code) {
  if (auto s = args.Parse(argc, argv); !s.ok()) {
    *exit_code = Fail(command, s);
    return false;
  }
  if (args.help()) {
    std::fputs(args.Usage().c_str(), stdout);
    *exit_code = 0;
    return false;
  }
  return true;
}

absl::StatusOr<int> Int4GroupSizeFlag(const Args& args, int fallback, bool zero_chooses) {
  if (!args.Has("int4-group-size")) return fallback;
  const std::string text = args.Get("int4-group-size");
  int size;
  if (!absl::SimpleAtoi(text, &size)) {
    return absl::InvalidArgumentError(absl::StrCat("--int4-group-size \"", text, "\" is invalid; allowed: ",
                                                   AllowedInt4GroupSizes(zero_chooses)));
  }
  RETURN_IF_ERROR(ValidateInt4GroupSize(size, zero_chooses, "--int4-group-size"));
  return size;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const Args& args, const Tokenizer* tokenizer, int vocab_size, int bos_id,
                                               bool chat) {
  if (args.Has("prompt") == args.Has("prompt-ids")) {
    return absl::InvalidArgumentError("give exactly one of --prompt TEXT or --prompt-ids ID,ID,...");
  }
  if (args.Has("prompt-ids")) {
    if (chat) return absl::InvalidArgumentError("--chat applies to --prompt, not --prompt-ids");
    auto ids = args.GetIntList("prompt-ids", 0, vocab_size - 1);
    if (!ids.ok()) return ids.status();
    if (ids->empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
    return ids;
  }
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError("the model has no tokenizer.model; use --prompt-ids");
  }
  std::string text = args.Get("prompt");
  if (chat) {
    auto rendered = RenderChat({{"user", text}});
    if (!rendered.ok()) return rendered.status();
    text = *rendered;
  }
  auto ids = tokenizer->Encode(text);
  if (!ids.ok()) return ids.status();
  ids->insert(ids->begin(), bos_id);
  return ids;
}

}  // namespace gemma
