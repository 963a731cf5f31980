#include "tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/chat_template.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

std::unique_ptr<Tokenizer> TinyTokenizer() {
  auto t = Tokenizer::FromFile(testing::GemmaTinyDir() + "/tokenizer.model");
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(*t);
}

TEST(TokenizerTest, Gemma3ReferenceCasesEncodeAndDecode) {
  const std::string dir = testing::Gemma3TokenizerDir();
  ASSERT_FALSE(dir.empty()) << "gemma3-tokenizer test data is missing; set GEMMA_TESTDATA";
  auto tok = Tokenizer::FromFile(dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 262144);
  EXPECT_EQ((*tok)->start_of_turn_id(), 105);
  EXPECT_EQ((*tok)->end_of_turn_id(), 106);
  std::ifstream in(dir + "/cases.jsonl");
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    const auto c = nlohmann::json::parse(line);
    const std::string text = c["text"];
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << "case " << cases << ": " << text.substr(0, 60);
    auto back = (*tok)->Decode(*ids);
    ASSERT_TRUE(back.ok());
    std::string expected = text;  // a literal U+2581 comes back as a space
    for (size_t p; (p = expected.find("\xE2\x96\x81")) != std::string::npos;) expected.replace(p, 3, " ");
    ASSERT_EQ(*back, expected) << "case " << cases;
    ++cases;
  }
  EXPECT_EQ(cases, 389);
}

TEST(TokenizerTest, SpecialIdsOfTinyTokenizer) {
  auto tok = TinyTokenizer();
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->start_of_turn_id(), 4);
  EXPECT_EQ(tok->end_of_turn_id(), 5);
  EXPECT_EQ(tok->PieceToId("<no such piece>"), -1);
}

TEST(TokenizerTest, ChatTemplateMatchesReferencePrompt) {
  auto tok = TinyTokenizer();
  auto text = RenderChat({{"user", "What is Gemma?"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<start_of_turn>user\nWhat is Gemma?<end_of_turn>\n<start_of_turn>model\n");
  auto ids = tok->Encode(*text);
  ASSERT_TRUE(ids.ok());
  ids->insert(ids->begin(), 2);
  // The reference "chat" prompt ids (tiny-mha generations.json).
  const auto gens = nlohmann::json::parse(testing::ReadFile(testing::GemmaTinyDir() + "/reference/tiny-mha/generations.json"));
  EXPECT_EQ(*ids, gens["results"][2]["prompt_ids"].get<std::vector<int32_t>>());
  EXPECT_FALSE(RenderChat({{"system", "x"}}).ok());
  EXPECT_FALSE(RenderChat({}).ok());
  EXPECT_TRUE(RenderChat({{"user", "a"}, {"assistant", "b"}, {"user", "c"}}).ok());
}

TEST(TokenizerTest, RejectsInvalidUtf8AndOutOfRangeIds) {
  auto tok = TinyTokenizer();
  EXPECT_FALSE(tok->Encode("bad \xff byte").ok());
  EXPECT_FALSE(tok->Encode("\xed\xa0\x80").ok());  // a surrogate
  std::vector<int32_t> bad = {4096};
  EXPECT_FALSE(tok->Decode(bad).ok());
}

TEST(TokenizerTest, StreamingDecoderNeverSplitsACharacter) {
  auto tok = TinyTokenizer();
  const std::string text = "a \xF0\x9F\x98\x80 b\xC3\xBC";  // emoji and u-umlaut are byte-fallback pieces here
  auto ids = tok->Encode(text);
  ASSERT_TRUE(ids.ok());
  StreamingDecoder stream(tok.get());
  std::string out;
  for (int32_t id : *ids) {
    auto delta = stream.Add(id);
    ASSERT_TRUE(delta.ok());
    EXPECT_EQ(delta->find("\xEF\xBF\xBD"), std::string::npos) << "replacement char leaked";
    out += *delta;
  }
  out += *stream.Flush();
  EXPECT_EQ(out, text);
}

}  // namespace
}  // namespace gemma
