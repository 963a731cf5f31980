#include "router/text_stream.h"

#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

std::unique_ptr<Tokenizer> Tiny() { return std::move(*Tokenizer::FromFile(testing::GemmaTinyDir() + "/tokenizer.model")); }

std::string StreamAll(const Tokenizer& tok, const std::string& text, std::vector<std::string> stops, bool* stopped,
                      std::vector<std::string>* deltas) {
  TextStream stream(&tok, std::move(stops));
  std::string out;
  auto ids = tok.Encode(text);
  EXPECT_TRUE(ids.ok());
  for (int32_t id : *ids) {
    auto d = stream.Add(id);
    EXPECT_TRUE(d.ok());
    deltas->push_back(*d);
    out += *d;
  }
  out += stream.Finish();
  *stopped = stream.stopped();
  return out;
}

TEST(TextStreamTest, StopSequenceAcrossTokensNeverLeaks) {
  auto tok = Tiny();
  bool stopped;
  std::vector<std::string> deltas;
  const std::string out = StreamAll(*tok, "The answer is 42. END of story", {"END"}, &stopped, &deltas);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "The answer is 42. ");
  for (const auto& d : deltas) EXPECT_EQ(d.find('E'), std::string::npos) << "a stop-sequence prefix leaked: " << d;
}

TEST(TextStreamTest, HeldBackPrefixIsReleasedWhenItDoesNotMatch) {
  auto tok = Tiny();
  bool stopped;
  std::vector<std::string> deltas;
  EXPECT_EQ(StreamAll(*tok, "an ENd to it", {"END"}, &stopped, &deltas), "an ENd to it");
  EXPECT_FALSE(stopped);
}

TEST(TextStreamTest, MultiByteCharactersArriveWhole) {
  auto tok = Tiny();
  bool stopped;
  std::vector<std::string> deltas;
  const std::string text = "caf\xC3\xA9 \xF0\x9F\x98\x80 \xE2\x82\xAC";
  EXPECT_EQ(StreamAll(*tok, text, {}, &stopped, &deltas), text);
  for (const auto& d : deltas) EXPECT_EQ(d.find("\xEF\xBF\xBD"), std::string::npos);
}

}  // namespace
}  // namespace gemma
