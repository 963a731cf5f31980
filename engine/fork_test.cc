// Sequences that fork from others and share their KV blocks: beam search (against an exhaustive search of a small
// model's outputs, greedy at one beam, validation, cancellation) and n samples of one prompt.
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "engine/engine.h"
#include "engine/run_batch.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

constexpr int kBlockSize = 4;
constexpr int kStop = 0;

// A model with a KV cache of its own: each row writes its tokens into its blocks, and the next token's log-probs
// over a vocabulary of `vocab` are a fixed function of every token the row's block table holds, so a block shared
// wrongly, or read before it was written, changes what comes out.
class ContextExecutor : public StepExecutor {
 public:
  explicit ContextExecutor(int vocab) : vocab_(vocab) {}

  std::vector<float> LogProbs(const std::vector<int32_t>& context) const {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int32_t t : context) h = Mix(h ^ static_cast<uint64_t>(t));
    std::vector<float> logits(vocab_);
    for (int t = 0; t < vocab_; ++t) logits[t] = static_cast<float>(Mix(h + t) % 65536) / 8192.0f;
    float mx = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (float l : logits) z += std::exp(l - mx);
    for (float& l : logits) l = l - mx - static_cast<float>(std::log(z));
    return logits;
  }

  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
    std::vector<RowResult> out;
    for (const StepRow& r : rows) {
      const int end = r.start_pos + static_cast<int>(r.tokens.size());
      EXPECT_GE(static_cast<int>(r.block_table.size()) * kBlockSize, end);
      for (size_t i = 0; i < r.tokens.size(); ++i) {
        const int pos = r.start_pos + static_cast<int>(i);
        kv_[r.block_table[pos / kBlockSize]][pos % kBlockSize] = r.tokens[i];
      }
      computed_ += static_cast<int>(r.tokens.size());
      RowResult res;
      res.sequence_id = r.sequence_id;
      if (r.sample) {
        std::vector<int32_t> context;
        for (int pos = 0; pos < end; ++pos) context.push_back(kv_.at(r.block_table[pos / kBlockSize])[pos % kBlockSize]);
        const std::vector<float> lp = LogProbs(context);
        std::vector<TokenLogprob> ranked;
        for (int t = 0; t < vocab_; ++t) ranked.push_back({t, lp[t]});
        std::stable_sort(ranked.begin(), ranked.end(),
                         [](const TokenLogprob& a, const TokenLogprob& b) { return a.logprob > b.logprob; });
        // A "sample": greedy at temperature 0, else a token picked by the seed and the position.
        const TokenLogprob drawn =
            r.sampling.temperature == 0 ? ranked[0] : ranked[Mix(r.sampling.seed * 1000 + end) % vocab_];
        res.sampled = true;
        res.token = drawn.token;
        res.logprob = drawn.logprob;
        ranked.resize(std::min<size_t>(ranked.size(), r.top_logprobs));
        res.top_logprobs = ranked;
      }
      out.push_back(std::move(res));
    }
    return out;
  }
  int computed() const { return computed_; }

 private:
  static uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  int vocab_;
  std::map<int32_t, std::array<int32_t, kBlockSize>> kv_;
  int computed_ = 0;
};

EngineOptions Options(bool prefix_cache) {
  EngineOptions o;
  o.num_blocks = 256;
  o.block_size = kBlockSize;
  o.prefix_cache = prefix_cache;
  return o;
}

SequenceSpec BeamSpec(int prompt_len, int max_new, int beams, float length_penalty, bool early_stopping) {
  SequenceSpec s;
  for (int i = 0; i < prompt_len; ++i) s.prompt.push_back(10 + 3 * i);
  s.max_new_tokens = max_new;
  s.stop_ids = {kStop};
  s.beams.num_beams = beams;
  s.beams.length_penalty = length_penalty;
  s.beams.early_stopping = early_stopping;
  return s;
}

// Every output of at most `max_new` tokens (ending at the first stop, or at max_new), with its score.
void Enumerate(const ContextExecutor& model, std::vector<int32_t>& context, size_t prompt_len, double sum,
               int max_new, float length_penalty, std::vector<Beam>* all) {
  const std::vector<float> lp = model.LogProbs(context);
  for (int t = 0; t < static_cast<int>(lp.size()); ++t) {
    context.push_back(t);
    const double s = sum + lp[t];
    const int length = static_cast<int>(context.size() - prompt_len);
    if (t == kStop || length == max_new) {
      Beam b;
      b.tokens.assign(context.begin() + prompt_len, context.end());
      b.sum_logprob = s;
      b.score = s / std::pow(static_cast<double>(length), length_penalty);
      all->push_back(std::move(b));
    } else {
      Enumerate(model, context, prompt_len, s, max_new, length_penalty, all);
    }
    context.pop_back();
  }
}

// With num_beams at least the live prefixes of the longest output ((vocab - 1) ^ (max_new - 1)) and 2 * num_beams
// candidates covering the vocabulary, beam search keeps every prefix: its beams are the exhaustive top num_beams.
TEST(BeamSearchTest, EqualsAnExhaustiveSearchOverShortOutputs) {
  constexpr int kVocab = 3, kMaxNew = 3, kBeams = 4;
  for (bool prefix_cache : {false, true}) {
    for (float length_penalty : {0.0f, 1.0f, 2.5f, -1.0f}) {
      for (int prompt_len : {1, 4, 6, 9}) {
        SCOPED_TRACE(::testing::Message() << "prefix cache " << prefix_cache << ", length_penalty "
                                          << length_penalty << ", prompt " << prompt_len);
        ContextExecutor model(kVocab);
        Engine engine(Options(prefix_cache), &model);
        const SequenceSpec spec = BeamSpec(prompt_len, kMaxNew, kBeams, length_penalty, /*early_stopping=*/false);
        auto done = RunBatch(engine, {spec});
        ASSERT_TRUE(done.ok()) << done.status();
        const std::vector<Beam>& beams = (*done)[0].beams;

        std::vector<Beam> all;
        std::vector<int32_t> context = spec.prompt;
        Enumerate(model, context, spec.prompt.size(), 0.0, kMaxNew, length_penalty, &all);
        std::stable_sort(all.begin(), all.end(), [](const Beam& a, const Beam& b) { return a.score > b.score; });
        ASSERT_EQ(beams.size(), static_cast<size_t>(kBeams));
        for (int i = 0; i < kBeams; ++i) {
          EXPECT_EQ(beams[i].tokens, all[i].tokens) << "beam " << i;
          EXPECT_NEAR(beams[i].score, all[i].score, 1e-6) << "beam " << i;
          EXPECT_NEAR(beams[i].sum_logprob, all[i].sum_logprob, 1e-6) << "beam " << i;
          double sum = 0;
          for (float l : beams[i].logprobs) sum += l;
          EXPECT_NEAR(sum, beams[i].sum_logprob, 1e-5);
          EXPECT_EQ(beams[i].finish, beams[i].tokens.back() == kStop ? FinishReason::kStopToken : FinishReason::kLength);
        }
        EXPECT_EQ((*done)[0].tokens, beams[0].tokens);
        EXPECT_EQ((*done)[0].finish, beams[0].finish);
        EXPECT_TRUE(engine.idle());
        EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
      }
    }
  }
}

TEST(BeamSearchTest, OneBeamIsGreedy) {
  for (bool early_stopping : {false, true}) {
    for (int prompt_len : {1, 3, 8}) {
      ContextExecutor model(50);
      Engine engine(Options(false), &model);
      SequenceSpec greedy = BeamSpec(prompt_len, 12, 0, 1.0f, false);
      greedy.stop_ids = {};  // a stop token (if greedy drew one) would end greedy, but only end a beam's hypothesis
      SequenceSpec beam = greedy;
      beam.beams = {1, 1.0f, early_stopping};
      auto done = RunBatch(engine, {greedy, beam});
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_EQ((*done)[1].tokens, (*done)[0].tokens);
      EXPECT_EQ((*done)[1].token_logprobs, (*done)[0].token_logprobs);
      ASSERT_EQ((*done)[1].beams.size(), 1u);
      EXPECT_EQ((*done)[1].finish, FinishReason::kLength);
    }
  }
  // With a stop token and early stopping, one beam ends where greedy does.
  ContextExecutor model(3);
  Engine engine(Options(false), &model);
  SequenceSpec greedy = BeamSpec(5, 30, 0, 1.0f, true);
  SequenceSpec beam = BeamSpec(5, 30, 1, 1.0f, true);
  auto done = RunBatch(engine, {greedy, beam});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].finish, FinishReason::kStopToken);
  EXPECT_EQ((*done)[1].tokens, (*done)[0].tokens);
  EXPECT_EQ((*done)[1].finish, FinishReason::kStopToken);
}

TEST(BeamSearchTest, BeamsShareThePromptsBlocksAndPrefillItOnce) {
  // An 8-token prompt fills two blocks: the beams fork from the one that prefilled it and share both.
  ContextExecutor model(20);
  Engine engine(Options(false), &model);
  SequenceSpec spec = BeamSpec(8, 6, 4, 1.0f, false);
  spec.stop_ids = {};
  ASSERT_TRUE(engine.Add(7, spec).ok());
  int steps = 0;
  bool answered = false;
  while (!engine.idle()) {
    ASSERT_TRUE(engine
                    .Step([&](const SequenceUpdate& u) {
                      EXPECT_EQ(u.id, 7u);
                      EXPECT_EQ(u.result, nullptr);
                      EXPECT_EQ(u.beams.size(), 4u);
                      answered = true;
                      return false;
                    },
                          [](uint64_t id) { EXPECT_EQ(id, 7u) << "the caller hears only of its own ids"; })
                    .ok());
    ++steps;
    if (steps == 2) {
      // Four beams, holding the two prompt blocks together and at most one of their own each (12 unshared).
      EXPECT_EQ(engine.scheduler().running(), 4);
      EXPECT_LE(engine.scheduler().blocks().used_blocks(), 2 + 4);
    }
  }
  EXPECT_TRUE(answered);
  EXPECT_EQ(engine.prefilled_tokens(), 8);
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(BeamSearchTest, BeamsThatDoNotFitTheCacheTogetherTakeTurnsAndChooseAlike) {
  ContextExecutor model(20);
  Engine roomy(Options(false), &model);
  SequenceSpec spec = BeamSpec(5, 8, 4, 1.0f, false);
  auto want = RunBatch(roomy, {spec});
  ASSERT_TRUE(want.ok()) << want.status();
  for (int blocks : {4, 5, 6}) {  // one beam's 13 positions take 4 blocks
    EngineOptions o = Options(false);
    o.num_blocks = blocks;
    Engine tight(o, &model);
    auto got = RunBatch(tight, {spec});
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ((*got)[0].beams.size(), (*want)[0].beams.size());
    for (size_t i = 0; i < (*want)[0].beams.size(); ++i) {
      EXPECT_EQ((*got)[0].beams[i].tokens, (*want)[0].beams[i].tokens) << blocks << " blocks, beam " << i;
    }
    EXPECT_GT(tight.scheduler().preemptions(), 0) << blocks << " blocks";
    EXPECT_EQ(tight.scheduler().blocks().used_blocks(), 0);
  }
}

TEST(BeamSearchTest, ACancelledSearchReleasesEveryBeam) {
  ContextExecutor model(20);
  Engine engine(Options(true), &model);
  ASSERT_TRUE(engine.Add(3, BeamSpec(6, 20, 5, 1.0f, false)).ok());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(engine.Step([](const SequenceUpdate&) { return false; }).ok());
  EXPECT_GT(engine.scheduler().running(), 1);
  EXPECT_EQ(engine.Remove(3), nullptr);
  EXPECT_TRUE(engine.idle());
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(BeamSearchTest, RefusesParametersOutOfRange) {
  ContextExecutor model(3);
  Engine engine(Options(false), &model);
  auto refused = [&](SequenceSpec s, const std::string& says) {
    const absl::Status st = engine.Add(1, std::move(s));
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
    EXPECT_NE(st.message().find(says), std::string::npos) << st.message();
  };
  refused(BeamSpec(3, 4, 11, 1.0f, false), "num_beams 11 is out of range; allowed: 0 (no beam search) to 10");
  refused(BeamSpec(3, 4, -1, 1.0f, false), "num_beams -1 is out of range");
  refused(BeamSpec(3, 4, 2, 11.0f, false), "length_penalty 11 is out of range; allowed: [-10, 10]");
  refused(BeamSpec(3, 4, 2, NAN, false), "length_penalty nan is out of range");
  SequenceSpec hot = BeamSpec(3, 4, 2, 1.0f, false);
  hot.sampling.temperature = 0.7f;
  refused(hot, "num_beams 2 cannot be combined with temperature");
  SequenceSpec top = BeamSpec(3, 4, 2, 1.0f, false);
  top.top_logprobs = 2;
  refused(top, "cannot be combined with top_logprobs");
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(Engine::kFirstOwnId, BeamSpec(3, 4, 0, 1.0f, false))));
  EXPECT_TRUE(engine.idle());
}

SequenceSpec Sampled(int prompt_len, int max_new, uint64_t seed) {
  SequenceSpec s;
  for (int i = 0; i < prompt_len; ++i) s.prompt.push_back(10 + 3 * i);
  s.max_new_tokens = max_new;
  s.sampling.temperature = 1.0f;
  s.sampling.seed = seed;
  return s;
}

TEST(ForkTest, SamplesOfOnePromptComputeItOnceAndDrawAsAlone) {
  for (bool prefix_cache : {false, true}) {
    for (int prompt_len : {1, 8, 18}) {
      SCOPED_TRACE(::testing::Message() << "prefix cache " << prefix_cache << ", prompt " << prompt_len);
      std::vector<SequenceSpec> alone, forked;
      for (int i = 0; i < 4; ++i) {
        alone.push_back(Sampled(prompt_len, 6, 100 + i));
        forked.push_back(alone.back());
        if (i > 0) forked.back().fork_of = 0;
      }
      ContextExecutor model_a(50), model_b(50);
      Engine a(Options(prefix_cache), &model_a), b(Options(false), &model_b);
      std::vector<CompletedSequence> want;
      for (const SequenceSpec& s : alone) {
        auto one = RunBatch(b, {s});
        ASSERT_TRUE(one.ok()) << one.status();
        want.push_back((*one)[0]);
      }
      auto got = RunBatch(a, forked);
      ASSERT_TRUE(got.ok()) << got.status();
      std::set<std::vector<int32_t>> distinct;
      for (int i = 0; i < 4; ++i) {
        EXPECT_EQ((*got)[i].tokens, want[i].tokens) << "sample " << i;
        distinct.insert((*got)[i].tokens);
      }
      EXPECT_GT(distinct.size(), 1u) << "the samples drew alike: the test shows nothing";
      // The prompt once, and the samples' own positions past its last whole block short of its last token.
      const int own = prompt_len - (prompt_len - 1) / kBlockSize * kBlockSize;
      EXPECT_EQ(a.prefilled_tokens(), prompt_len + 3 * own);
      EXPECT_EQ(a.scheduler().blocks().used_blocks(), 0);
    }
  }
}

TEST(ForkTest, SamplesGoOnWhenTheSequenceTheyWaitForIsCancelledOrUnknown) {
  ContextExecutor model(50);
  EngineOptions o = Options(false);
  o.limits.max_prefill_chunk = 8;
  Engine engine(o, &model);
  SequenceSpec first = Sampled(30, 4, 1);
  ASSERT_TRUE(engine.Add(1, first).ok());
  SequenceSpec second = Sampled(30, 4, 2);
  second.fork_of = 1;
  ASSERT_TRUE(engine.Add(2, second).ok());
  SequenceSpec stray = Sampled(30, 4, 3);
  stray.fork_of = 99;  // unknown: on its own
  ASSERT_TRUE(engine.Add(3, stray).ok());
  // One step prefills part of the first prompt; then the first is cancelled and the second takes its blocks.
  ASSERT_TRUE(engine.Step([](const SequenceUpdate&) { return false; }).ok());
  EXPECT_NE(engine.Remove(1), nullptr);
  std::set<uint64_t> finished;
  while (!engine.idle()) {
    ASSERT_TRUE(engine
                    .Step([&](const SequenceUpdate& u) {
                      if (u.finish != FinishReason::kNone) finished.insert(u.id);
                      return false;
                    })
                    .ok());
  }
  EXPECT_EQ(finished, (std::set<uint64_t>{2, 3}));
  EXPECT_EQ(engine.prefilled_tokens(), 8 + 30 - 8 + 30);  // the second went on from the first's 8 positions
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

}  // namespace
}  // namespace gemma
