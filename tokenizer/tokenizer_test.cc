#include "tokenizer/tokenizer.h"

#include <algorithm>
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
  // Turns alternate from a user turn, as the Hub templates raise ("Conversation roles must alternate").
  auto twice = RenderChat({{"user", "a"}, {"user", "b"}});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("message 1 (role \"user\"): an assistant (model) turn was due"),
            std::string::npos)
      << twice.status();
  auto model_first = RenderChat({{"assistant", "a"}, {"user", "b"}});
  ASSERT_FALSE(model_first.ok());
  EXPECT_NE(model_first.status().message().find("message 0 (role \"assistant\"): a user turn was due"),
            std::string::npos)
      << model_first.status();
  EXPECT_TRUE(RenderChat({{"user", "a"}, {"model", "b"}}).ok()) << "a conversation may end on the model's turn";
}

// Gemma 3's Jinja template: {{ bos }}, then the first user turn opens with the system text and a blank line.
TEST(TokenizerTest, Gemma3ChatTemplateFoldsTheSystemMessageIntoTheFirstUserTurn) {
  auto text = RenderChat({{"system", "You are terse."}, {"user", "  Hi! "}, {"assistant", "Hello."}, {"user", "Bye"}},
                         ChatStyle::kGemma3);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text,
            "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n"
            "<start_of_turn>model\n");
  // Without a system message it is Gemma 1 and 2's template.
  EXPECT_EQ(*RenderChat({{"user", "Hi"}}, ChatStyle::kGemma3), *RenderChat({{"user", "Hi"}}));
  // A system message needs a user turn to fold into, and comes first only.
  auto alone = RenderChat({{"system", "x"}}, ChatStyle::kGemma3);
  ASSERT_FALSE(alone.ok());
  EXPECT_NE(alone.status().message().find("needs a user message after it"), std::string::npos) << alone.status();
  EXPECT_FALSE(RenderChat({{"system", "x"}, {"model", "y"}}, ChatStyle::kGemma3).ok());
  auto late = RenderChat({{"user", "a"}, {"system", "x"}}, ChatStyle::kGemma3);
  ASSERT_FALSE(late.ok());
  EXPECT_NE(late.status().message().find("system as the first message"), std::string::npos) << late.status();
  // Gemma 1 and 2 keep refusing it, saying why.
  auto g2 = RenderChat({{"system", "x"}, {"user", "a"}});
  ASSERT_FALSE(g2.ok());
  EXPECT_NE(g2.status().message().find("has no system role"), std::string::npos) << g2.status();
}

// The real Gemma 3 vocabulary holds the turn markers as single pieces: a folded chat encodes as the -it models see it.
TEST(TokenizerTest, Gemma3ChatEncodesWithTurnPieces) {
  const std::string dir = testing::Gemma3TokenizerDir();
  ASSERT_FALSE(dir.empty()) << "gemma3-tokenizer test data is absent";
  auto tok = Tokenizer::FromFile(dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = RenderChat({{"system", "Be brief."}, {"user", "Hello"}}, ChatStyle::kGemma3);
  ASSERT_TRUE(text.ok());
  auto ids = (*tok)->Encode(*text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_GE(ids->size(), 6u);
  EXPECT_EQ((*ids)[0], 105);  // <start_of_turn>
  EXPECT_EQ((*tok)->start_of_turn_id(), 105);
  EXPECT_EQ((*tok)->end_of_turn_id(), 106);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 106), 1);
  EXPECT_EQ(ids->back(), 107);  // "\n" after "model"
}

TEST(TokenizerTest, AFolderOrAMissingFileIsNamedAsSuch) {
  const auto folder = Tokenizer::FromFile(testing::GemmaTinyDir());
  ASSERT_FALSE(folder.ok());
  EXPECT_NE(folder.status().message().find("is a directory; give the SentencePiece model file"), std::string::npos)
      << folder.status();
  const auto missing = Tokenizer::FromFile(testing::GemmaTinyDir() + "/no-such.model");
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  // Bytes that are no model: said in the project's words, not SentencePiece's source line.
  const auto garbage = Tokenizer::FromBytes("\x0a\x05hello garbage");
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().message(), "not a SentencePiece model: the file is not a serialized model proto");
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

TEST(TokenizerTest, PieceTypesAndPieces) {
  auto tok = Tokenizer::FromFile(testing::GemmaTinyDir() + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  using Type = Tokenizer::PieceType;
  EXPECT_EQ((*tok)->piece_type(0), Type::kControl);  // <pad>
  EXPECT_EQ((*tok)->piece_type(1), Type::kControl);  // <eos>
  EXPECT_EQ((*tok)->piece_type(3), Type::kUnknown);
  EXPECT_EQ((*tok)->piece_type(4), Type::kUserDefined);  // <start_of_turn>
  EXPECT_EQ((*tok)->piece_type(6), Type::kByte);
  EXPECT_EQ((*tok)->IdToPiece(6), "<0x00>");
  EXPECT_EQ((*tok)->IdToPiece(4), "<start_of_turn>");
  EXPECT_EQ((*tok)->piece_type(300), Type::kNormal);
}

}  // namespace
}  // namespace gemma
