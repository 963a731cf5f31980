// gemma tokenize: text (from --text or stdin, byte for byte) to ids, without <bos>.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "nlohmann/json.hpp"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/default_model.h"

namespace gemma {

int TokenizeCommand(int argc, char** argv) {
  const char* kCmd = "tokenize";
  Args args(kCmd, "(--model DIR | --tokenizer FILE) [--text TEXT] --json");
  args.Flag("model", "checkpoint directory holding tokenizer.model")
      .Flag("tokenizer", "a SentencePiece tokenizer.model file")
      .Flag("text", "text to tokenize (default: all of stdin, exactly as given)")
      .Flag("json", "print {\"ids\": [...]} (the only output format)", true);
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  if (args.Has("model") && args.Has("tokenizer")) {
    return Fail(kCmd, absl::InvalidArgumentError("give --model or --tokenizer, not both"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      args.Has("tokenizer") ? Tokenizer::FromFile(args.Get("tokenizer"))
      : args.Has("model")   ? Tokenizer::FromFile(args.Get("model") + "/tokenizer.model")
                            : Tokenizer::FromBytes(EmbeddedTokenizerBytes());
  if (!tok.ok()) return Fail(kCmd, tok.status());
  std::string text;
  if (args.Has("text")) {
    text = args.Get("text");
  } else {
    std::cin >> std::noskipws;
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  auto ids = (*tok)->Encode(text);
  if (!ids.ok()) return Fail(kCmd, ids.status());
  std::printf("%s\n", nlohmann::json({{"ids", *ids}}).dump().c_str());
  return 0;
}

}  // namespace gemma
