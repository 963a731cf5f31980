// Random generations under 10 schemas: every output ends, parses, and validates against its schema with a small
// validator written here, independent of the grammar code.
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "structured/grammar.h"
#include "structured/matcher.h"
#include "structured/test_schemas.h"
#include "structured/test_support.h"

namespace gemma::structured {
namespace {

using nlohmann::json;
using testing::kSchemas;
using testing::Valid;

TEST(ValidatorTest, RejectsWhatItShould) {
  const json s = json::parse(R"({"type":"object","properties":{"a":{"type":"string","maxLength":2}},"required":["a"],
      "additionalProperties":false})");
  std::string why;
  EXPECT_TRUE(Valid(json::parse(R"({"a":"xy"})"), s, s, &why)) << why;
  EXPECT_FALSE(Valid(json::parse(R"({"a":"xyz"})"), s, s, &why));
  EXPECT_FALSE(Valid(json::parse(R"({})"), s, s, &why));
  EXPECT_FALSE(Valid(json::parse(R"({"a":"x","b":1})"), s, s, &why));
  EXPECT_FALSE(Valid(json::parse(R"([])"), s, s, &why));
}

TEST(GenerationTest, RandomOutputsEndParseAndValidate) {
  auto vocab = testing::TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  constexpr int kBudget = 4000;
  for (int i = 0; i < static_cast<int>(std::size(kSchemas)); ++i) {
    const json schema = json::parse(kSchemas[i]);
    auto grammar = Grammar::FromJsonSchema(schema, vocab, {testing::kTinyEos, testing::kTinyEndOfTurn});
    ASSERT_TRUE(grammar.ok()) << "schema " << i + 1 << ": " << grammar.status();
    for (int seed = 0; seed < 20; ++seed) {
      std::mt19937 rng(1000 * i + seed);
      Matcher m(*grammar);
      std::string text;
      std::vector<int32_t> allowed;
      for (int step = 0; step < kBudget && !m.Ended(); ++step) {
        const TokenBitmask& mask = m.Allowed();
        allowed.clear();
        for (int32_t id = 0; id < vocab->size(); ++id) {
          if (TokenAllowed(mask, id)) allowed.push_back(id);
        }
        ASSERT_FALSE(allowed.empty()) << "schema " << i + 1 << " seed " << seed << " after " << text;
        const int32_t token = allowed[std::uniform_int_distribution<size_t>(0, allowed.size() - 1)(rng)];
        ASSERT_TRUE(m.Accept(token).ok());
        if (vocab->bytes(token)) text += *vocab->bytes(token);
      }
      ASSERT_TRUE(m.Ended()) << "schema " << i + 1 << " seed " << seed << " did not end: " << text.substr(0, 300);
      const json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
      ASSERT_FALSE(value.is_discarded()) << "schema " << i + 1 << " seed " << seed << ": not JSON: " << text;
      std::string why;
      EXPECT_TRUE(Valid(value, schema, schema, &why)) << "schema " << i + 1 << " seed " << seed << ": " << text
                                                      << "\n  " << why;
      if (seed == 0) std::printf("schema %d: %s\n", i + 1, text.c_str());
    }
  }
}

}  // namespace
}  // namespace gemma::structured
