#include "router/structured_output.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "router/bounded_json.h"
#include "structured/matcher.h"

namespace gemma {
namespace {

// Compiled grammars kept: each can hold up to 64 MiB of cached masks, so few.
constexpr size_t kMaxGrammars = 16;

// A matcher as the engine's constraint: masks padded to the model's vocabulary, where it is larger than the
// tokenizer's (ids past the tokenizer's are never allowed).
class GrammarConstraint : public TokenConstraint {
 public:
  GrammarConstraint(std::shared_ptr<structured::Grammar> grammar, int model_vocab)
      : matcher_(std::move(grammar)), words_((static_cast<size_t>(model_vocab) + 31) / 32) {}

  const std::vector<uint32_t>& Allowed() override {
    const std::vector<uint32_t>& mask = matcher_.Allowed();
    if (mask.size() == words_) return mask;
    padded_.assign(words_, 0);
    std::copy_n(mask.begin(), std::min(mask.size(), words_), padded_.begin());
    return padded_;
  }
  absl::Status Accept(int32_t token) override { return matcher_.Accept(token); }

 private:
  structured::Matcher matcher_;
  const size_t words_;
  std::vector<uint32_t> padded_;
};

}  // namespace

void StructuredOutput::Prepare() {
  auto built = structured::Vocabulary::FromTokenizer(*tokenizer_);
  if (!built.ok()) return;  // reported to the first request that needs it
  absl::MutexLock lock(&mu_);
  if (vocabulary_ == nullptr) vocabulary_ = *built;
}

absl::StatusOr<std::shared_ptr<structured::Grammar>> StructuredOutput::GrammarFor(const v1::ResponseFormat& format,
                                                                                 const std::vector<int32_t>& end_ids) {
  const std::string key = absl::StrCat(format.type(), "\n", absl::StrJoin(end_ids, ","), "\n", format.json_schema());
  std::shared_ptr<const structured::Vocabulary> vocabulary;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = grammars_.begin(); it != grammars_.end(); ++it) {
      if (it->first != key) continue;
      grammars_.splice(grammars_.begin(), grammars_, it);
      return it->second;
    }
    if (vocabulary_ == nullptr) {
      auto built = structured::Vocabulary::FromTokenizer(*tokenizer_);
      if (!built.ok()) return built.status();
      vocabulary_ = *built;
    }
    vocabulary = vocabulary_;
  }
  // Compiled outside the lock: a large schema does not hold up requests with cached ones.
  std::shared_ptr<structured::Grammar> grammar;
  if (format.type() == "json_object") {
    grammar = structured::Grammar::AnyJsonObject(vocabulary, end_ids);
  } else {
    bool too_deep = false;
    const nlohmann::json schema = ParseBoundedJson(format.json_schema(), &too_deep);
    if (schema.is_discarded()) {
      return absl::InvalidArgumentError(too_deep ? absl::StrCat("response_format.json_schema nests deeper than ",
                                                                kMaxJsonDepth, " levels")
                                                 : "response_format.json_schema is not valid JSON");
    }
    auto compiled = structured::Grammar::FromJsonSchema(schema, vocabulary, end_ids);
    if (!compiled.ok()) return compiled.status();
    grammar = *compiled;
  }
  absl::MutexLock lock(&mu_);
  grammars_.emplace_front(key, grammar);
  if (grammars_.size() > kMaxGrammars) grammars_.pop_back();
  return grammar;
}

absl::StatusOr<std::shared_ptr<TokenConstraint>> StructuredOutput::ConstraintFor(const v1::ResponseFormat& format,
                                                                                 const std::vector<int32_t>& end_ids) {
  if (format.type().empty() || format.type() == "text") {
    if (!format.json_schema().empty()) {
      return absl::InvalidArgumentError("response_format.json_schema is only read with type \"json_schema\"");
    }
    return nullptr;
  }
  if (format.type() != "json_object" && format.type() != "json_schema") {
    return absl::InvalidArgumentError(absl::StrCat("response_format.type \"", format.type(),
                                                   "\" is not supported; allowed: text, json_object, json_schema"));
  }
  if (format.type() == "json_schema" && format.json_schema().empty()) {
    return absl::InvalidArgumentError("response_format.json_schema is required with type \"json_schema\"");
  }
  auto grammar = GrammarFor(format, end_ids);
  if (!grammar.ok()) return grammar.status();
  return std::make_shared<GrammarConstraint>(*grammar, model_vocab_);
}

}  // namespace gemma
