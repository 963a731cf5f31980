// Beam search on the tiny checkpoints: one beam equals greedy, and beams that share KV blocks (forked, part of a
// block computed again) choose what a search computing every candidate's whole sequence afresh chooses.
#include <algorithm>
#include <cmath>

#include "gtest/gtest.h"
#include "tests/reference_helpers.h"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

constexpr int32_t kEos = 1;

// The log-probs after `context`, from a forward pass over all of it in a cache of its own.
std::vector<double> LogProbsAfter(Backend* backend, const std::vector<int32_t>& context) {
  const int blocks = static_cast<int>(context.size()) / backend->kv_block_size() + 1;
  std::vector<int32_t> table(blocks);
  for (int i = 0; i < blocks; ++i) table[i] = i;
  StepLogits out;
  SequenceStep step{context, 0, table, LogitsWanted::kLast};
  EXPECT_TRUE(backend->Forward({&step, 1}, &out).ok());
  return LogSoftmax(out.Row(0), out.vocab_size);
}

// The engine's rule (engine/scheduler.h, BeamSearchParams) over whole rows of log-probs computed afresh for every
// beam: each beam's 2 * num_beams best tokens are its candidates.
std::vector<Beam> ReferenceBeams(Backend* backend, const std::vector<int32_t>& prompt, int beams, int max_new,
                                 float length_penalty) {
  struct Live {
    std::vector<int32_t> tokens;
    double sum = 0;
  };
  std::vector<Live> live = {{}};
  std::vector<Beam> finished;
  for (int step = 1; step <= max_new; ++step) {
    struct Candidate {
      double sum;
      int beam;
      int32_t token;
    };
    std::vector<Candidate> candidates;
    for (int b = 0; b < static_cast<int>(live.size()); ++b) {
      std::vector<int32_t> context = prompt;
      context.insert(context.end(), live[b].tokens.begin(), live[b].tokens.end());
      const std::vector<double> lp = LogProbsAfter(backend, context);
      std::vector<int32_t> order(lp.size());
      for (size_t t = 0; t < lp.size(); ++t) order[t] = static_cast<int32_t>(t);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) { return lp[a] > lp[c]; });
      for (int k = 0; k < 2 * beams; ++k) candidates.push_back({live[b].sum + lp[order[k]], b, order[k]});
    }
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& c) { return a.sum > c.sum; });
    std::vector<Live> next;
    for (const Candidate& c : candidates) {
      Live grown = live[c.beam];
      grown.tokens.push_back(c.token);
      grown.sum = c.sum;
      const bool stop = c.token == kEos;
      if (stop || step == max_new) {
        if (!stop && static_cast<int>(next.size()) >= beams) continue;
        if (!stop) next.push_back(grown);  // counted, so that only num_beams end at the length
        Beam h;
        h.tokens = grown.tokens;
        h.sum_logprob = c.sum;
        h.score = c.sum / std::pow(static_cast<double>(h.tokens.size()), length_penalty);
        finished.push_back(h);
      } else if (static_cast<int>(next.size()) < beams) {
        next.push_back(grown);
      }
    }
    live = next;
  }
  std::stable_sort(finished.begin(), finished.end(), [](const Beam& a, const Beam& b) { return a.score > b.score; });
  finished.resize(std::min<size_t>(finished.size(), beams));
  return finished;
}

SequenceSpec BeamSpec(std::vector<int32_t> prompt, int max_new, int beams, float length_penalty) {
  SequenceSpec s;
  s.prompt = std::move(prompt);
  s.max_new_tokens = max_new;
  s.stop_ids = {kEos};
  s.beams = {beams, length_penalty, /*early_stopping=*/false};
  return s;
}

TEST(BeamSearchReferenceTest, OneBeamIsGreedyOnEveryTinyCheckpoint) {
  for (const TinyModel& m : TinyModels()) {
    auto backend = OpenBackend(m.root() + "/" + m.name);
    const auto gens = ReadJson(m.root() + "/reference/" + m.reference + "/generations.json");
    const auto prompt = gens["results"][0]["prompt_ids"].get<std::vector<int32_t>>();
    const auto greedy = Greedy(backend.get(), {prompt}, 12)[0];
    SequenceSpec spec = BeamSpec(prompt, 12, 1, 1.0f);
    spec.stop_ids = {};
    const auto beam = RunOnEngine(backend.get(), {spec});
    EXPECT_EQ(beam[0].tokens, greedy) << m.name;
    ASSERT_EQ(beam[0].beams.size(), 1u);
  }
}

TEST(BeamSearchReferenceTest, SharedBlocksChooseAsBeamsComputedAfreshDo) {
  const TinyModel& m = TinyModels()[1];  // tiny-mqa
  auto backend = OpenBackend(m.root() + "/" + m.name);
  const auto gens = ReadJson(m.root() + "/reference/" + m.reference + "/generations.json");
  for (const auto& g : gens["results"]) {
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    for (auto [beams, length_penalty] : {std::pair{3, 1.0f}, std::pair{4, 0.0f}, std::pair{2, -0.5f}}) {
      SCOPED_TRACE(::testing::Message() << g["prompt"] << ", " << beams << " beams, length_penalty "
                                        << length_penalty);
      for (bool prefix_cache : {false, true}) {
        const auto got = RunOnEngine(backend.get(), {BeamSpec(prompt, 6, beams, length_penalty)}, {}, prefix_cache);
        const auto want = ReferenceBeams(backend.get(), prompt, beams, 6, length_penalty);
        ASSERT_EQ(got[0].beams.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          EXPECT_EQ(got[0].beams[i].tokens, want[i].tokens) << "beam " << i;
          EXPECT_NEAR(got[0].beams[i].score, want[i].score, 1e-4) << "beam " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace gemma::testing
