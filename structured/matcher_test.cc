#include "structured/matcher.h"

#include <atomic>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "structured/grammar.h"
#include "structured/test_support.h"
#include "structured/vocabulary.h"
#include "tests/testdata.h"
#include "tokenizer/tokenizer.h"

namespace gemma::structured {
namespace {

using nlohmann::json;
using testing::kTinyEndOfTurn;
using testing::kTinyEos;
using testing::TinyVocabulary;

std::vector<int32_t> AllowedIds(const TokenBitmask& mask, int vocab) {
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < vocab; ++id) {
    if (TokenAllowed(mask, id)) ids.push_back(id);
  }
  return ids;
}

// The reference: every token's bytes fed one by one to a copy of the matcher's state.
TokenBitmask BruteForceMask(const Matcher& m, const Vocabulary& vocab, const std::vector<int32_t>& end_ids) {
  TokenBitmask mask((vocab.size() + 31) / 32, 0);
  for (int32_t id = 0; id < vocab.size(); ++id) {
    const bool is_end = std::find(end_ids.begin(), end_ids.end(), id) != end_ids.end();
    const bool ok = is_end ? m.IsComplete() : vocab.bytes(id) != nullptr && m.AcceptsBytes(*vocab.bytes(id));
    if (ok) AllowToken(mask, id);
  }
  return mask;
}

std::string Describe(const TokenBitmask& got, const TokenBitmask& want, const Vocabulary& vocab) {
  std::string out;
  int shown = 0;
  for (int32_t id = 0; id < vocab.size() && shown < 10; ++id) {
    if (TokenAllowed(got, id) == TokenAllowed(want, id)) continue;
    out += "\n  token " + std::to_string(id) + " '" + (vocab.bytes(id) ? *vocab.bytes(id) : "<special>") +
           "': trie " + (TokenAllowed(got, id) ? "allows" : "rejects");
    ++shown;
  }
  return out;
}

std::vector<std::shared_ptr<Grammar>> BruteForceGrammars(std::shared_ptr<const Vocabulary> vocab) {
  const std::vector<int32_t> ends = {kTinyEos, kTinyEndOfTurn};
  std::vector<std::shared_ptr<Grammar>> grammars = {Grammar::AnyJsonObject(vocab, ends)};
  const char* schemas[] = {
      R"({"type":"object","properties":{"name":{"type":"string","maxLength":10},"age":{"type":"integer"},
          "score":{"type":"number"}},"required":["name"]})",
      R"({"type":"object","properties":{"tags":{"type":"array","items":{"enum":["a","ab","abc",1,12]},
          "minItems":1,"maxItems":4},"ok":{"type":["boolean","null"]}},"required":["tags","ok"]})",
      R"({"type":"object","properties":{"v":{"anyOf":[{"type":"object","properties":{"x":{"type":"integer"}},
          "required":["x"]},{"type":"object","properties":{"x":{"type":"string","maxLength":4}}},{"type":"number"}]}},
          "required":["v"]})",
      R"({"$defs":{"t":{"type":"object","properties":{"n":{"type":"string","minLength":2,"maxLength":6},
          "c":{"type":"array","items":{"$ref":"#/$defs/t"},"maxItems":2}},"required":["n"]}},"$ref":"#/$defs/t"})",
      R"({"type":"number"})",
      R"({"type":"string","minLength":2,"maxLength":8})",
      // Long bounded strings: masks looked up through MaskEquivalent's normalised counts.
      R"({"type":"array","items":{"type":"string","minLength":30,"maxLength":60},"maxItems":3})",
  };
  for (const char* s : schemas) {
    auto g = Grammar::FromJsonSchema(json::parse(s), vocab, ends);
    EXPECT_TRUE(g.ok()) << g.status();
    if (g.ok()) grammars.push_back(*g);
  }
  return grammars;
}

TEST(MatcherTest, TrieMaskEqualsBruteForceOnRandomReachableStates) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  const std::vector<int32_t> ends = {kTinyEos, kTinyEndOfTurn};
  std::mt19937 rng(1234);
  int checked = 0, states = 0;
  for (const auto& grammar : BruteForceGrammars(vocab)) {
    for (int run = 0; run < 3; ++run) {
      Matcher m(grammar);
      for (int step = 0; step < 40 && !m.Ended(); ++step, ++states) {
        const TokenBitmask& mask = m.Allowed();
        const TokenBitmask want = BruteForceMask(m, *vocab, ends);
        ASSERT_EQ(mask, want) << "grammar " << checked << " step " << step << Describe(mask, want, *vocab);
        const auto ids = AllowedIds(mask, vocab->size());
        ASSERT_FALSE(ids.empty());
        // Prefer not to end, to reach deeper states.
        std::vector<int32_t> pick;
        for (int32_t id : ids) {
          if (id != kTinyEos && id != kTinyEndOfTurn) pick.push_back(id);
        }
        if (pick.empty()) pick = ids;
        const int32_t token = pick[std::uniform_int_distribution<size_t>(0, pick.size() - 1)(rng)];
        ASSERT_TRUE(m.Accept(token).ok());
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 8);
  EXPECT_GT(states, 300);
}

// Every count of a long bounded string, whose masks come from normalised counts (Pda::MaskEquivalent).
TEST(MatcherTest, LongBoundedStringMasksEqualBruteForce) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  const std::vector<int32_t> ends = {kTinyEos};
  auto g = Grammar::FromJsonSchema(json::parse(R"({"type":"string","minLength":40,"maxLength":90})"), vocab, ends);
  ASSERT_TRUE(g.ok());
  int32_t quote = -1, a = -1;
  for (int32_t id = 0; id < vocab->size(); ++id) {
    if (vocab->bytes(id) && *vocab->bytes(id) == "\"") quote = id;
    if (vocab->bytes(id) && *vocab->bytes(id) == "a") a = id;
  }
  ASSERT_GE(quote, 0);
  ASSERT_GE(a, 0);
  Matcher m(*g);
  ASSERT_TRUE(m.Accept(quote).ok());
  for (int count = 0; count < 90; ++count) {
    const TokenBitmask& mask = m.Allowed();
    const TokenBitmask want = BruteForceMask(m, *vocab, ends);
    ASSERT_EQ(mask, want) << "count " << count << Describe(mask, want, *vocab);
    ASSERT_TRUE(m.Accept(a).ok());
  }
  for (int32_t id : AllowedIds(m.Allowed(), vocab->size())) EXPECT_EQ(*vocab->bytes(id), "\"");  // a byte piece too
  EXPECT_LT((*g)->cache_size(), 60u);  // counts far from both bounds share masks
}

// Sequences on several threads share one grammar and its cache.
TEST(MatcherTest, ThreadsShareAGrammar) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  const std::vector<int32_t> ends = {kTinyEos};
  auto grammar = Grammar::AnyJsonObject(vocab, ends);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches = 0;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t % 2);  // pairs of threads walk the same states
      Matcher m(grammar);
      for (int step = 0; step < 60 && !m.Ended(); ++step) {
        const TokenBitmask& mask = m.Allowed();
        if (mask != BruteForceMask(m, *vocab, ends)) ++mismatches;
        auto ids = AllowedIds(mask, vocab->size());
        if (ids.size() > 1) std::erase(ids, kTinyEos);  // keep going
        if (ids.empty() || !m.Accept(ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)]).ok()) {
          ++mismatches;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_GE(grammar->cache_size(), 3u);
}

TEST(MatcherTest, RejectedTokensAreInvalidArgument) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  auto g = Grammar::FromJsonSchema(json::parse(R"({"type":"object","properties":{"a":{"type":"integer"}},
      "required":["a"]})"), vocab, {kTinyEos});
  ASSERT_TRUE(g.ok()) << g.status();
  Matcher m(*g);
  // Not '{' first.
  for (int32_t id = 0; id < vocab->size(); ++id) {
    const std::string* b = vocab->bytes(id);
    if (b == nullptr || (*b)[0] == '{') continue;
    const absl::Status s = m.Accept(id);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_NE(s.message().find(std::to_string(id)), std::string::npos) << s;
    EXPECT_FALSE(TokenAllowed(m.Allowed(), id)) << id;
  }
  EXPECT_EQ(m.Accept(kTinyEos).code(), absl::StatusCode::kInvalidArgument);  // not complete yet
  EXPECT_EQ(m.Accept(2).code(), absl::StatusCode::kInvalidArgument);         // <bos>: special
  EXPECT_EQ(m.Accept(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.Accept(vocab->size()).code(), absl::StatusCode::kInvalidArgument);
  // A rejected token leaves the state alone: the whole valid output still goes through.
  auto ids = [&](std::string_view text) {
    for (int32_t id = 0; id < vocab->size(); ++id) {
      if (vocab->bytes(id) && *vocab->bytes(id) == text) return id;
    }
    ADD_FAILURE() << "no token for " << text;
    return -1;
  };
  for (const char* piece : {"{", "\"", "a", "\"", ":", "1", "2", "}"}) {
    ASSERT_TRUE(TokenAllowed(m.Allowed(), ids(piece))) << piece;
    ASSERT_TRUE(m.Accept(ids(piece)).ok()) << piece;
  }
  EXPECT_EQ(AllowedIds(m.Allowed(), vocab->size()), std::vector<int32_t>{kTinyEos});
  EXPECT_EQ(m.Accept(ids("}")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(m.Accept(kTinyEos).ok());
  EXPECT_TRUE(m.Ended());
  EXPECT_TRUE(AllowedIds(m.Allowed(), vocab->size()).empty());
  EXPECT_EQ(m.Accept(kTinyEos).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MatcherTest, CopiesForkIndependently) {
  auto vocab = Vocabulary::FromTokenBytes({std::nullopt, "{", "}", "\"", "a", ":", "1", "{\"a\":", ",", "2"});
  auto g = Grammar::FromJsonSchema(json::parse(R"({"properties":{"a":{"type":"integer"}}})"), vocab, {0});
  ASSERT_TRUE(g.ok()) << g.status();
  Matcher m(*g);
  ASSERT_TRUE(m.Accept(7).ok());  // {"a":
  Matcher fork = m;
  ASSERT_TRUE(m.Accept(6).ok());
  ASSERT_TRUE(fork.Accept(9).ok());
  ASSERT_TRUE(m.Accept(6).ok());  // 11
  EXPECT_FALSE(TokenAllowed(fork.Allowed(), 8));  // ',' : no key left
  EXPECT_TRUE(TokenAllowed(fork.Allowed(), 2));
  EXPECT_FALSE(TokenAllowed(fork.Allowed(), 0));
  ASSERT_TRUE(fork.Accept(2).ok());
  EXPECT_EQ(AllowedIds(fork.Allowed(), vocab->size()), std::vector<int32_t>{0});
}

TEST(MatcherTest, StringsAreValidUtf8AndEscapes) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  auto g = Grammar::FromJsonSchema(json::parse(R"({"type":"string","maxLength":3})"), vocab, {kTinyEos});
  ASSERT_TRUE(g.ok());
  Matcher m(*g);
  EXPECT_TRUE(m.AcceptsBytes("\"\xC3\xA9\\n\\u00e9\""));
  EXPECT_FALSE(m.AcceptsBytes("\"abcd"));              // 4 code points
  EXPECT_FALSE(m.AcceptsBytes("\"\xC0\xAF"));          // overlong
  EXPECT_FALSE(m.AcceptsBytes("\"\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(m.AcceptsBytes("\"\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(m.AcceptsBytes("\"\\ud800"));           // surrogate escape
  EXPECT_FALSE(m.AcceptsBytes("\"\\x"));
  EXPECT_FALSE(m.AcceptsBytes("\"\n"));                // raw control character
  EXPECT_FALSE(m.AcceptsBytes(" \"a\""));              // no whitespace
  EXPECT_TRUE(m.AcceptsBytes("\"\xF0\x9F\x98\x80\""));
}

TEST(MatcherTest, KeysAreMatchedEscaped) {
  auto vocab = Vocabulary::FromTokenBytes({std::nullopt});
  auto g = Grammar::FromJsonSchema(json::parse(R"({"properties":{"a\"b":{"type":"null"},"a":{"type":"null"},
      "c\\d":{"type":"null"},"é":{"type":"null"}}})"), vocab, {0});
  ASSERT_TRUE(g.ok()) << g.status();
  Matcher m(*g);
  EXPECT_TRUE(m.AcceptsBytes(R"({"a\"b":null,"a":null,"c\\d":null,"é":null})"));
  EXPECT_TRUE(m.AcceptsBytes(R"({"a":null,"a\"b":null})"));
  EXPECT_FALSE(m.AcceptsBytes(R"({"a":null,"a":)"));  // each key once
  EXPECT_TRUE(m.AcceptsBytes(R"({"a\")"));    // a prefix of "a\"b"
  EXPECT_FALSE(m.AcceptsBytes(R"({"a\"":)"));  // no key a"
  EXPECT_FALSE(m.AcceptsBytes(R"({"b)"));
  EXPECT_FALSE(m.AcceptsBytes(R"({"a":null,})"));
  EXPECT_FALSE(m.AcceptsBytes(R"({"a":null,"a\"b":null,"c\\d":null,"é":null,)"));  // no key left
}

TEST(MatcherTest, NumbersAreBounded) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  auto g = Grammar::FromJsonSchema(json::parse(R"({"type":"number"})"), vocab, {kTinyEos});
  ASSERT_TRUE(g.ok());
  Matcher m(*g);
  EXPECT_TRUE(m.AcceptsBytes("-0.5e+10"));
  EXPECT_TRUE(m.AcceptsBytes(std::string(19, '9')));
  EXPECT_FALSE(m.AcceptsBytes(std::string(20, '9')));
  EXPECT_TRUE(m.AcceptsBytes("1." + std::string(17, '1')));
  EXPECT_FALSE(m.AcceptsBytes("1." + std::string(18, '1')));
  EXPECT_FALSE(m.AcceptsBytes("1e1234"));
  EXPECT_TRUE(m.AcceptsBytes("1e-289"));
  EXPECT_TRUE(m.AcceptsBytes("1E+099"));
  EXPECT_FALSE(m.AcceptsBytes("1e290"));
  EXPECT_FALSE(m.AcceptsBytes("01"));
  EXPECT_FALSE(m.AcceptsBytes("1."  "e"));
  EXPECT_FALSE(m.AcceptsBytes("1,"));
  auto i = Grammar::FromJsonSchema(json::parse(R"({"type":"integer"})"), vocab, {kTinyEos});
  ASSERT_TRUE(i.ok());
  EXPECT_FALSE(Matcher(*i).AcceptsBytes("1.5"));
  EXPECT_FALSE(Matcher(*i).AcceptsBytes("1e5"));
  EXPECT_TRUE(Matcher(*i).AcceptsBytes("-12"));
}

TEST(MatcherTest, RepeatedStatesHitTheCache) {
  auto vocab = TinyVocabulary();
  ASSERT_NE(vocab, nullptr);
  auto grammar = Grammar::AnyJsonObject(vocab, {kTinyEos});
  Matcher a(grammar), b(grammar);
  const TokenBitmask& first = a.Allowed();
  EXPECT_EQ(grammar->cache_size(), 1u);
  EXPECT_EQ(&b.Allowed(), &first);  // the same cached mask
  EXPECT_EQ(grammar->cache_size(), 1u);
  EXPECT_GE(grammar->cache_capacity(), 64u);
}

// The real vocabulary: specials have no bytes, byte pieces are one byte, '▁' is a space.
TEST(VocabularyTest, Gemma3Pieces) {
  const std::string dir = gemma::testing::Gemma3TokenizerDir();
  ASSERT_FALSE(dir.empty()) << "gemma3-tokenizer test data is missing; set GEMMA_TESTDATA";
  auto tok = Tokenizer::FromFile(dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->piece_type(1), Tokenizer::PieceType::kControl);
  EXPECT_EQ((*tok)->piece_type(105), Tokenizer::PieceType::kUserDefined);
  EXPECT_EQ((*tok)->piece_type(238), Tokenizer::PieceType::kByte);
  auto vocab = Vocabulary::FromTokenizer(**tok);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ((*vocab)->size(), 262144);
  for (int32_t id : {0, 1, 2, 3, 4, 105, 106, 255999, 256000}) EXPECT_EQ((*vocab)->bytes(id), nullptr) << id;
  ASSERT_NE((*vocab)->bytes(107), nullptr);
  EXPECT_EQ(*(*vocab)->bytes(107), "\n");
  ASSERT_NE((*vocab)->bytes(238 + 0x41), nullptr);
  EXPECT_EQ(*(*vocab)->bytes(238 + 0x41), "A");
  // Every byte has a token, so no mask is ever empty before the end.
  std::vector<bool> single(256);
  for (int32_t id = 0; id < (*vocab)->size(); ++id) {
    const std::string* b = (*vocab)->bytes(id);
    if (b && b->size() == 1) single[static_cast<uint8_t>((*b)[0])] = true;
  }
  EXPECT_EQ(std::count(single.begin(), single.end(), true), 256);
  const auto ids = (*tok)->Encode(" hello");
  ASSERT_TRUE(ids.ok());
  std::string text;
  for (int32_t id : *ids) text += *(*vocab)->bytes(id);
  EXPECT_EQ(text, " hello");
}

}  // namespace
}  // namespace gemma::structured

namespace gemma::structured {
namespace {

// On the real vocabulary, in states reached by tokenizing a prefix, the trie mask equals the brute force.
TEST(MatcherTest, Gemma3MasksEqualBruteForce) {
  const std::string dir = gemma::testing::Gemma3TokenizerDir();
  ASSERT_FALSE(dir.empty()) << "gemma3-tokenizer test data is missing; set GEMMA_TESTDATA";
  auto tok = Tokenizer::FromFile(dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto vocab = Vocabulary::FromTokenizer(**tok);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  const std::vector<int32_t> ends = {1, 106};
  auto schema = Grammar::FromJsonSchema(json::parse(R"({"type":"object","properties":{"name":{"type":"string"},
      "age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["a","b"]}},
      "code":{"type":"string","minLength":2,"maxLength":3}},"required":["name"]})"),
                                        *vocab, ends);
  ASSERT_TRUE(schema.ok()) << schema.status();
  auto object = Grammar::AnyJsonObject(*vocab, ends);
  const std::pair<std::shared_ptr<Grammar>, std::string> cases[] = {
      {*schema, ""},          {*schema, "{"},          {*schema, R"({"name":"ab)"}, {*schema, R"({"age":12)"},
      {*schema, R"({"na)"},   {*schema, R"({"tags":[)"}, {*schema, R"({"name":"x"})"}, {object, "{"},
      {object, R"({"k":)"},  {object, R"({"k":[1.5e)"}, {object, R"({"ab)"}, {object, R"({"k":["x","y)"},
      {*schema, R"({"name":")"}, {*schema, R"({"code":"a)"}, {*schema, R"({"code":"ab)"}, {*schema, R"({"code":")"}};
  for (const auto& [grammar, prefix] : cases) {
    Matcher m(grammar);
    auto ids = (*tok)->Encode(prefix);
    ASSERT_TRUE(ids.ok());
    for (int32_t id : *ids) {
      ASSERT_TRUE(TokenAllowed(m.Allowed(), id)) << prefix << ": " << id;
      ASSERT_TRUE(m.Accept(id).ok()) << prefix;
    }
    const TokenBitmask& mask = m.Allowed();
    const TokenBitmask want = BruteForceMask(m, **vocab, ends);
    EXPECT_EQ(mask, want) << prefix << Describe(mask, want, **vocab);
  }
}

}  // namespace
}  // namespace gemma::structured
