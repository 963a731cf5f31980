#include "router/text_stream.h"

#include <chrono>
#include <random>

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


// A long output: prose with accented letters, emoji and CJK (byte-fallback pieces in this vocabulary), then
// random ids (stray bytes, control pieces).
std::vector<int32_t> LongOutput(const Tokenizer& tok, int random_ids) {
  std::string text;
  for (int i = 0; i < 60; ++i) {
    text += "Line " + std::to_string(i) + ": caf\xC3\xA9 na\xC3\xAFve \xF0\x9F\x98\x80 \xE6\x97\xA5\xE6\x9C\xAC \xE2\x82\xAC" "5, ";
  }
  std::vector<int32_t> ids = *tok.Encode(text);
  std::mt19937 rng(7);
  for (int i = 0; i < random_ids; ++i) ids.push_back(static_cast<int32_t>(rng() % tok.vocab_size()));
  return ids;
}

TEST(TextStreamTest, LongOutputsDecodeExactlyLikeAWholeDecode) {
  auto tok = Tiny();
  const std::vector<int32_t> ids = LongOutput(*tok, 3000);
  ASSERT_GT(ids.size(), 4000u);
  TextStream stream(tok.get(), {});
  std::string out;
  for (int32_t id : ids) {
    auto d = stream.Add(id);
    ASSERT_TRUE(d.ok());
    out += *d;
  }
  out += stream.Finish();
  EXPECT_EQ(out, *tok->Decode(ids));
  EXPECT_EQ(stream.text(), out);
}

// Each id costs about the same however long the output already is (the text is not decoded again from the
// start): the last 1000 of 16,000 ids take no longer than the first 1000, within a wide margin.
TEST(TextStreamTest, CostPerTokenDoesNotGrowWithTheOutput) {
  auto tok = Tiny();
  std::vector<int32_t> ids;
  const std::vector<int32_t> text = *tok->Encode("Once upon a time the caf\xC3\xA9 sold \xF0\x9F\x98\x80 cakes. ");
  while (ids.size() < 16000) ids.insert(ids.end(), text.begin(), text.end());
  ids.resize(16000);
  TextStream stream(tok.get(), {"END"});
  auto time_of = [&](size_t from, size_t to) {
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = from; i < to; ++i) EXPECT_TRUE(stream.Add(ids[i]).ok());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const double first = time_of(0, 1000);
  time_of(1000, 15000);
  const double last = time_of(15000, 16000);
  EXPECT_LT(last, 4 * first + 0.005) << "first 1000 ids: " << first << " s, last 1000: " << last << " s";
}

}  // namespace
}  // namespace gemma
