#include "shard/runtime/sampler.h"

#include <cmath>

#include "gtest/gtest.h"

namespace gemma {
namespace {

// Probabilities 0.4, 0.3, 0.2, 0.1 and a long tail of zeros' worth of mass (-inf logits excluded).
std::vector<float> Logits() { return {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)}; }

std::vector<double> Frequencies(const SamplingParams& p, int draws) {
  Sampler s(p);
  const auto logits = Logits();
  std::vector<double> f(logits.size());
  for (int i = 0; i < draws; ++i) f[s.Sample(logits.data(), static_cast<int>(logits.size()))] += 1.0 / draws;
  return f;
}

TEST(SamplerTest, GreedyPicksArgmax) {
  auto logits = Logits();
  Sampler s({0.0f, 0, 1.0f, 1});
  EXPECT_EQ(s.Sample(logits.data(), 4), 0);
}

TEST(SamplerTest, TemperatureOneDrawsTheDistribution) {
  const auto f = Frequencies({1.0f, 0, 1.0f, 11}, 40000);
  const double want[] = {0.4, 0.3, 0.2, 0.1};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], want[i], 0.01) << i;
}

TEST(SamplerTest, TopKRenormalizesOverKMostLikely) {
  const auto f = Frequencies({1.0f, 2, 1.0f, 12}, 40000);
  EXPECT_NEAR(f[0], 0.4 / 0.7, 0.01);
  EXPECT_NEAR(f[1], 0.3 / 0.7, 0.01);
  EXPECT_EQ(f[2] + f[3], 0.0);
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingP) {
  // 0.4 + 0.3 = 0.7 < 0.8, so the 0.2 token is kept too; 0.1 is cut.
  const auto f = Frequencies({1.0f, 0, 0.8f, 13}, 40000);
  EXPECT_NEAR(f[0], 0.4 / 0.9, 0.01);
  EXPECT_NEAR(f[1], 0.3 / 0.9, 0.01);
  EXPECT_NEAR(f[2], 0.2 / 0.9, 0.01);
  EXPECT_EQ(f[3], 0.0);
}

TEST(SamplerTest, LowTemperatureSharpens) {
  const auto f = Frequencies({0.25f, 0, 1.0f, 14}, 20000);
  // p ~ q^4: 0.0256, 0.0081, 0.0016, 0.0001 normalized.
  EXPECT_NEAR(f[0], 0.0256 / 0.0354, 0.015);
}

TEST(SamplerTest, SeedMakesDrawsReproducible) {
  Sampler a({1.0f, 0, 1.0f, 42}), b({1.0f, 0, 1.0f, 42}), c({1.0f, 0, 1.0f, 43});
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const double x = a.NextUniform();
    EXPECT_EQ(x, b.NextUniform());
    differs |= x != c.NextUniform();
  }
  EXPECT_TRUE(differs);
}

TEST(SamplerTest, LogProbsAndTopN) {
  const auto logits = Logits();
  EXPECT_NEAR(LogProbOf(logits.data(), 4, 1), std::log(0.3), 1e-6);
  const auto top = TopLogProbs(logits.data(), 4, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].first, 0);
  EXPECT_EQ(top[1].first, 1);
}

TEST(SamplerTest, PenaltiesLowerSeenTokens) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f};
  const int32_t history[] = {0, 1, 0, 7000};  // 7000 is outside the vocabulary: ignored
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  ApplyPenalties(p, history, 0, logits.data(), 4);  // all generated
  EXPECT_FLOAT_EQ(logits[0], 2.0f / 2 - 0.5f - 0.25f * 2);
  EXPECT_FLOAT_EQ(logits[1], -1.0f * 2 - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[2], 0.5f);
  EXPECT_FLOAT_EQ(logits[3], 3.0f);
  SamplingParams none;
  std::vector<float> same = {1.0f, 2.0f};
  ApplyPenalties(none, std::span<const int32_t>(history, 2), 0, same.data(), 2);
  EXPECT_EQ(same, (std::vector<float>{1.0f, 2.0f}));
}

// Repetition counts the prompt and the output (Hugging Face); presence and frequency only the output (OpenAI).
TEST(SamplerTest, PresenceAndFrequencyCountGeneratedTokensOnly) {
  const int32_t history[] = {0, 1, 1, 0, 2};  // prompt {0, 1, 1}, generated {0, 2}
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  ApplyPenalties(p, history, 3, logits.data(), 4);
  EXPECT_FLOAT_EQ(logits[0], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[1], 1.0f);  // only in the prompt
  EXPECT_FLOAT_EQ(logits[2], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[3], 1.0f);
  SamplingParams rep;
  rep.repetition_penalty = 2.0f;
  logits = {1.0f, 1.0f, 1.0f, 1.0f};
  ApplyPenalties(rep, history, 3, logits.data(), 4);
  EXPECT_EQ(logits, (std::vector<float>{0.5f, 0.5f, 0.5f, 1.0f}));
}

TEST(SamplerTest, ValidatesParameters) {
  SamplingParams bad_rep;
  bad_rep.repetition_penalty = 0.0f;
  EXPECT_FALSE(ValidateSamplingParams(bad_rep).ok());
  SamplingParams bad_presence;
  bad_presence.presence_penalty = 3.0f;
  EXPECT_FALSE(ValidateSamplingParams(bad_presence).ok());
  EXPECT_FALSE(ValidateSamplingParams({-1.0f, 0, 1.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, -1, 1.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 0.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 1.5f, 0}).ok());
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 40, 0.95f, 0}).ok());
}

}  // namespace
}  // namespace gemma

namespace gemma {
namespace {

TEST(TokenMaskTest, MaskedTokensAreNeverDrawnInAnyMode) {
  const int vocab = 70;  // three words, the last one partly used
  std::vector<float> logits(vocab);
  for (int t = 0; t < vocab; ++t) logits[t] = static_cast<float>(t % 7);
  std::vector<uint32_t> mask(3, 0);
  for (int t : {3, 40, 69}) mask[t / 32] |= 1u << (t % 32);
  ASSERT_TRUE(ValidateTokenMask(mask, vocab).ok());
  std::vector<float> masked = logits;
  ApplyTokenMask(mask, masked.data(), vocab);
  EXPECT_EQ(Argmax(masked.data(), vocab), 69) << "69 % 7 = 6 beats 3 and 40 % 7 = 5";
  SamplingParams p;
  p.temperature = 2.0f;
  p.top_k = 50;
  p.top_p = 0.99f;
  for (int64_t position = 0; position < 500; ++position) {
    p.seed = static_cast<uint64_t>(position);
    const int t = SampleAt(p, position, masked.data(), vocab);
    ASSERT_TRUE(t == 3 || t == 40 || t == 69) << t;
  }
}

TEST(TokenMaskTest, MalformedMasksAreRefused) {
  EXPECT_FALSE(ValidateTokenMask(std::vector<uint32_t>(2, ~0u), 70).ok()) << "too few words";
  EXPECT_FALSE(ValidateTokenMask(std::vector<uint32_t>(4, ~0u), 70).ok()) << "too many words";
  std::vector<uint32_t> none(3, 0);
  EXPECT_FALSE(ValidateTokenMask(none, 70).ok());
  none[2] = 1u << 10;  // token 74: past the vocabulary
  const absl::Status outside = ValidateTokenMask(none, 70);
  EXPECT_FALSE(outside.ok());
  EXPECT_NE(outside.message().find("allows no token"), std::string::npos) << outside;
}

}  // namespace
}  // namespace gemma
