#include "engine/engine.h"
#include "engine/status_macros.h"

#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/run_batch.h"
#include "gtest/gtest.h"

namespace gemma {
namespace {

// A model that answers token = position (so recomputation is visible) and scores every target at -position.
class PositionExecutor : public StepExecutor {
 public:
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
    ++steps;
    if (fail_next) {
      fail_next = false;
      return absl::UnavailableError("the group failed");
    }
    std::vector<RowResult> out;
    for (const StepRow& r : rows) {
      // A block table that covers the row, with ids from the pool (a dangling table shows here).
      EXPECT_GE(static_cast<int64_t>(r.block_table.size()) * 4, r.start_pos + static_cast<int64_t>(r.tokens.size()));
      for (int32_t b : r.block_table) EXPECT_TRUE(b >= 0 && b < 64) << "block " << b;
      RowResult res;
      res.sequence_id = r.sequence_id;
      const int32_t end = r.start_pos + static_cast<int32_t>(r.tokens.size());
      if (r.sample) {
        res.sampled = true;
        res.token = end;
        res.logprob = -0.5f;
      }
      for (size_t i = 0; i < r.score_targets.size(); ++i) {
        res.score_logprobs.push_back(r.score_targets[i] < 0 ? 0.0f : -static_cast<float>(r.start_pos + i + 1));
      }
      out.push_back(res);
      if (drop_one) break;
    }
    return out;
  }
  int steps = 0;
  bool fail_next = false;
  bool drop_one = false;
};

EngineOptions Options(int blocks = 64, int block_size = 4) {
  EngineOptions o;
  o.num_blocks = blocks;
  o.block_size = block_size;
  return o;
}

SequenceSpec Prompt(int n, int max_new) {
  SequenceSpec s;
  for (int i = 0; i < n; ++i) s.prompt.push_back(10 + i);
  s.max_new_tokens = max_new;
  return s;
}

TEST(EngineTest, StopsAtLengthOrAStopToken) {
  PositionExecutor exec;
  Engine engine(Options(), &exec);
  auto stop = Prompt(5, 10);
  stop.stop_ids = {7};  // the token at position 7
  auto done = RunBatch(engine, {Prompt(5, 4), stop});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].tokens, (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ((*done)[0].finish, FinishReason::kLength);
  EXPECT_EQ((*done)[1].tokens, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ((*done)[1].finish, FinishReason::kStopToken);
  EXPECT_TRUE(engine.idle());
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(EngineTest, ScoresEveryPromptTokenOnceAcrossChunks) {
  PositionExecutor exec;
  EngineOptions o = Options();
  o.limits.max_prefill_chunk = 3;
  Engine engine(o, &exec);
  auto spec = Prompt(8, 0);
  spec.score = true;
  auto done = RunBatch(engine, {spec});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].prompt_logprobs, (std::vector<float>{-1, -2, -3, -4, -5, -6, -7}));
  EXPECT_EQ((*done)[0].finish, FinishReason::kScored);
  EXPECT_TRUE((*done)[0].tokens.empty());
}

// Scores each row against the target it is given: -(target + 0.5), 0 where none.
class TargetEchoExecutor : public PositionExecutor {
 public:
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
    ASSIGN_OR_RETURN(std::vector<RowResult> out, PositionExecutor::Execute(rows));
    for (size_t r = 0; r < rows.size(); ++r) {
      out[r].score_logprobs.clear();
      for (int32_t t : rows[r].score_targets) out[r].score_logprobs.push_back(t < 0 ? 0.0f : -(t + 0.5f));
    }
    return out;
  }
};

// KerasNLP's target_ids: every position's logits (the last prompt position's too) scored against the target the
// caller gave for it, once, across chunks; -1 scores nothing there.
TEST(EngineTest, GivenScoreTargetsScoreEveryPositionAgainstThem) {
  TargetEchoExecutor exec;
  EngineOptions o = Options();
  o.limits.max_prefill_chunk = 3;
  Engine engine(o, &exec);
  auto spec = Prompt(8, 0);
  spec.score = true;
  spec.score_targets = {7, 11, -1, 3, 0, 9, 2, 5};
  auto done = RunBatch(engine, {spec});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].prompt_logprobs, (std::vector<float>{-7.5f, -11.5f, 0, -3.5f, -0.5f, -9.5f, -2.5f, -5.5f}));
  EXPECT_EQ((*done)[0].finish, FinishReason::kScored);
}

TEST(EngineTest, ScoreTargetsMustMatchTheScoredPrompt) {
  PositionExecutor exec;
  Engine engine(Options(), &exec);
  auto spec = Prompt(4, 0);
  spec.score = true;
  spec.score_targets = {1, 2, 3};
  const absl::Status short_targets = engine.Add(1, spec);
  EXPECT_TRUE(absl::IsInvalidArgument(short_targets)) << short_targets;
  EXPECT_NE(short_targets.message().find("one per prompt token"), std::string::npos) << short_targets;
  auto generate = Prompt(4, 2);
  generate.score_targets = {1, 2, 3, 4};
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(2, generate)));
}

TEST(EngineTest, AFailedStepLeavesSequencesToRetryAndAShortAnswerIsAnError) {
  PositionExecutor exec;
  Engine engine(Options(), &exec);
  ASSERT_TRUE(engine.Add(1, Prompt(3, 2)).ok());
  exec.fail_next = true;
  int updates = 0;
  EXPECT_TRUE(absl::IsUnavailable(engine.Step([&](const SequenceUpdate&) { return ++updates, false; })));
  EXPECT_EQ(updates, 0);
  ASSERT_TRUE(engine.Step([&](const SequenceUpdate& u) {
    EXPECT_EQ(u.result->token, 3);  // the prompt is still prefilled from the start
    return ++updates, false;
  }).ok());
  EXPECT_EQ(updates, 1);
  ASSERT_TRUE(engine.Add(2, Prompt(3, 2)).ok());
  exec.drop_one = true;
  EXPECT_TRUE(absl::IsInternal(engine.Step([](const SequenceUpdate&) { return false; })));
}

// Records what each row of a penalized sequence carries, and which sequences the engine releases.
struct HistoryRecorder : PositionExecutor {
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
    if (lose_history_once) {
      lose_history_once = false;
      return absl::FailedPreconditionError("the penalty history of sequence 1 is not held here");
    }
    for (const StepRow& r : rows) {
      if (!r.sampling.has_penalties()) continue;
      histories.emplace_back(r.penalty_history.begin(), r.penalty_history.end());
      prompt_len = r.penalty_prompt_len;
    }
    return PositionExecutor::Execute(rows);
  }
  void Release(std::span<const uint64_t> ids) override { released.insert(released.end(), ids.begin(), ids.end()); }
  std::vector<std::vector<int32_t>> histories;  // one per penalized row, in step order
  std::vector<uint64_t> released;
  int prompt_len = -1;
  bool lose_history_once = false;
};

TEST(EngineTest, PenalizedRowsCarryNoHistoryAndEndedSequencesAreReleased) {
  HistoryRecorder exec;
  Engine engine(Options(), &exec);
  auto spec = Prompt(3, 10);
  spec.sampling.frequency_penalty = 1.0f;
  ASSERT_TRUE(engine.Add(1, spec).ok());
  int tokens = 0;
  while (!engine.idle()) {
    ASSERT_TRUE(engine.Step([&](const SequenceUpdate&) { return ++tokens == 3; }).ok());
  }
  EXPECT_EQ(tokens, 3);
  // The executor builds the history from the rows: none of them carries it (today's requests sent 3, 4, 5 tokens).
  ASSERT_EQ(exec.histories.size(), 3u);
  for (const auto& h : exec.histories) EXPECT_TRUE(h.empty()) << h.size() << " history tokens sent";
  EXPECT_EQ(exec.prompt_len, 3);
  EXPECT_EQ(exec.released, (std::vector<uint64_t>{1}));  // ended by the caller: released
  // Without penalties nothing is recorded or released.
  ASSERT_TRUE(engine.Add(2, Prompt(3, 1)).ok());
  ASSERT_TRUE(engine.Step([](const SequenceUpdate&) { return false; }).ok());
  EXPECT_EQ(exec.histories.size(), 3u);
  EXPECT_EQ(exec.released, (std::vector<uint64_t>{1}));
  // Removed by the caller (a cancel) before it ran: released all the same.
  ASSERT_TRUE(engine.Add(3, spec).ok());
  ASSERT_NE(engine.Remove(3), nullptr);
  EXPECT_EQ(exec.released, (std::vector<uint64_t>{1, 3}));
}

TEST(EngineTest, AHistoryTheExecutorCannotHaveIsSentInFull) {
  HistoryRecorder exec;
  Engine engine(Options(), &exec);  // prefix cache on, blocks of 4
  auto spec = Prompt(9, 2);
  spec.sampling.repetition_penalty = 1.3f;
  ASSERT_TRUE(RunBatch(engine, {spec}).ok());
  exec.histories.clear();
  // Same prompt: it starts after 8 cached positions, rows the executor never saw; its first row brings them.
  ASSERT_TRUE(engine.Add(7, spec).ok());
  ASSERT_TRUE(engine.Step([](const SequenceUpdate&) { return false; }).ok());
  ASSERT_EQ(exec.histories.size(), 1u);
  EXPECT_EQ(exec.histories[0], spec.prompt);  // positions [0, 9): the cached 8 and the row's own
  // The executor lost it (evicted): the step comes again with the whole history.
  exec.lose_history_once = true;
  ASSERT_TRUE(engine.Step([](const SequenceUpdate&) { return false; }).ok());
  EXPECT_EQ(engine.history_resends(), 1);
  ASSERT_EQ(exec.histories.size(), 2u);
  std::vector<int32_t> full = spec.prompt;
  full.push_back(9);  // the first generated token (token = position)
  EXPECT_EQ(exec.histories[1], full);
}

TEST(EngineTest, AMalformedRowFailsOnlyItsOwnSequence) {
  struct Picky : PositionExecutor {
    absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
      for (const StepRow& r : rows) {
        if (r.sequence_id == 2) return absl::InvalidArgumentError("sequence 2: token id 999 is outside the vocabulary");
      }
      return PositionExecutor::Execute(rows);
    }
  } exec;
  Engine engine(Options(), &exec);
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(engine.Add(id, Prompt(3, 1)).ok());
  std::map<uint64_t, FinishReason> finish;
  ASSERT_TRUE(engine.Step([&](const SequenceUpdate& u) {
    finish[u.id] = u.finish;
    if (u.id == 2) EXPECT_NE(u.error.message().find("vocabulary"), std::string::npos);
    return false;
  }).ok());
  EXPECT_EQ(finish[1], FinishReason::kLength);
  EXPECT_EQ(finish[2], FinishReason::kFailed);
  EXPECT_EQ(finish[3], FinishReason::kLength);
  EXPECT_TRUE(engine.idle());
}

// A row whose logits were not finite fails alone, saying so (and why, where the request's own changes ran); a
// drawn token with a NaN log-prob is never passed on as a token.
TEST(EngineTest, ARowWithNonFiniteLogitsFailsOnlyItsOwnSequence) {
  struct Overflowing : PositionExecutor {
    absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
      auto out = PositionExecutor::Execute(rows);
      for (RowResult& r : *out) {
        if (r.sequence_id == 2) r.logprob = std::nanf("");
        if (r.sequence_id == 3 && !r.score_logprobs.empty()) r.score_logprobs.back() = HUGE_VALF;
      }
      return out;
    }
  } exec;
  Engine engine(Options(), &exec);
  ASSERT_TRUE(engine.Add(1, Prompt(3, 1)).ok());
  SequenceSpec steered = Prompt(3, 1);
  steered.interventions.push_back({.kind = InterventionKind::kScaleMlp, .layer = 0, .factor = 1e38f});
  ASSERT_TRUE(engine.Add(2, steered).ok());
  SequenceSpec scored = Prompt(3, 0);
  scored.score = true;
  ASSERT_TRUE(engine.Add(3, scored).ok());
  std::map<uint64_t, SequenceUpdate> last;
  ASSERT_TRUE(engine.Step([&](const SequenceUpdate& u) {
    last[u.id] = u;
    return false;
  }).ok());
  EXPECT_EQ(last[1].finish, FinishReason::kLength);
  EXPECT_EQ(last[2].finish, FinishReason::kFailed);
  EXPECT_TRUE(absl::IsInvalidArgument(last[2].error)) << last[2].error;
  EXPECT_NE(last[2].error.message().find("logits are not finite"), std::string::npos) << last[2].error;
  EXPECT_NE(last[2].error.message().find("interventions"), std::string::npos) << last[2].error;
  EXPECT_EQ(last[3].finish, FinishReason::kFailed);
  EXPECT_TRUE(absl::IsInternal(last[3].error)) << last[3].error;
  EXPECT_TRUE(engine.idle());
}

TEST(EngineTest, RunBatchReportsARefusedRequest) {
  struct Refusing : PositionExecutor {
    absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
      return absl::InvalidArgumentError("token id 999 is outside the vocabulary");
    }
  } exec;
  Engine engine(Options(), &exec);
  auto done = RunBatch(engine, {Prompt(3, 2)});
  ASSERT_FALSE(done.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(done.status()));
  EXPECT_NE(done.status().message().find("request 0"), std::string::npos) << done.status();
  EXPECT_TRUE(engine.idle());
}

// Runs steps as the remote executor does when overlapping: each started step runs in order, and a row marked
// token_from_last_step takes the token the step before drew for it.
class OverlappingExecutor : public PositionExecutor {
 public:
  bool CanStart() const override { return true; }
  std::future<absl::StatusOr<std::vector<RowResult>>> Start(std::span<const StepRow> rows,
                                                             bool after_previous) override {
    ++started;
    if (after_previous) ++overlapped;
    std::vector<StepRow> copy(rows.begin(), rows.end());
    std::vector<std::vector<int32_t>> tokens(copy.size());
    for (size_t i = 0; i < copy.size(); ++i) {
      if (!copy[i].token_from_last_step) continue;
      EXPECT_TRUE(after_previous);
      EXPECT_TRUE(copy[i].tokens.empty());
      auto it = last_draws.find(copy[i].sequence_id);
      EXPECT_NE(it, last_draws.end()) << copy[i].sequence_id;
      tokens[i] = {it == last_draws.end() ? -1 : it->second};
      copy[i].tokens = tokens[i];
    }
    auto out = Execute(copy);
    last_draws.clear();
    if (out.ok()) {
      for (const RowResult& r : *out) {
        if (r.sampled) last_draws[r.sequence_id] = r.token;
      }
    }
    std::promise<absl::StatusOr<std::vector<RowResult>>> p;
    p.set_value(std::move(out));
    return p.get_future();
  }
  std::map<uint64_t, int32_t> last_draws;
  int started = 0, overlapped = 0;
};

// A worker that refuses some steps sent ahead, as one that no longer holds the router's session does.
class ForgetfulExecutor : public OverlappingExecutor {
 public:
  std::future<absl::StatusOr<std::vector<RowResult>>> Start(std::span<const StepRow> rows,
                                                             bool after_previous) override {
    // What it refuses it does not run, so a step sent after a refused one is refused too.
    refusing = after_previous && (refusing || ++ahead % 3 == 0);
    if (refusing) {
      last_draws.clear();
      std::promise<absl::StatusOr<std::vector<RowResult>>> p;
      p.set_value(absl::FailedPreconditionError("step follows a session this worker does not hold"));
      return p.get_future();
    }
    return OverlappingExecutor::Start(rows, after_previous);
  }
  int ahead = 0;
  bool refusing = false;
};

TEST(EngineTest, AStepSentAheadAndRefusedRunsAgainOnItsOwn) {
  PositionExecutor plain;
  Engine one_at_a_time(Options(), &plain);
  auto expected = RunBatch(one_at_a_time, {Prompt(5, 25), Prompt(7, 25)});
  ASSERT_TRUE(expected.ok());
  ForgetfulExecutor exec;
  EngineOptions o = Options();
  o.overlap = true;
  Engine engine(o, &exec);
  auto got = RunBatch(engine, {Prompt(5, 25), Prompt(7, 25)});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT(exec.ahead, 3);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ((*got)[i].tokens, (*expected)[i].tokens) << i;
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(EngineTest, OverlappedStepsGiveTheSameTokensAndEndSequencesCleanly) {
  auto specs = [] {
    auto stop = Prompt(5, 30);
    stop.stop_ids = {12};  // drawn at position 12, while the step after it is already in flight
    return std::vector<SequenceSpec>{Prompt(5, 20), stop, Prompt(9, 3)};
  };
  PositionExecutor plain;
  Engine one_at_a_time(Options(), &plain);
  auto expected = RunBatch(one_at_a_time, specs());
  ASSERT_TRUE(expected.ok());
  OverlappingExecutor exec;
  EngineOptions o = Options();
  o.overlap = true;
  Engine engine(o, &exec);
  auto got = RunBatch(engine, specs());
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < expected->size(); ++i) {
    EXPECT_EQ((*got)[i].tokens, (*expected)[i].tokens) << i;
    EXPECT_EQ((*got)[i].finish, (*expected)[i].finish) << i;
  }
  EXPECT_GT(exec.overlapped, 10);
  EXPECT_TRUE(engine.idle());
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(EngineTest, OverlappedStepsNeverPlanOrReportASequenceAfterItsEnd) {
  OverlappingExecutor exec;
  EngineOptions o = Options();
  o.overlap = true;
  Engine engine(o, &exec);
  for (uint64_t id = 1; id <= 4; ++id) {
    auto spec = Prompt(4, 40);
    spec.stop_ids = {static_cast<int32_t>(6 + 3 * id)};  // each stops at another position, mid-pipeline
    ASSERT_TRUE(engine.Add(id, spec).ok());
  }
  std::set<uint64_t> ended;
  while (!engine.idle()) {
    ASSERT_TRUE(engine.Step(
        [&](const SequenceUpdate& u) {
          EXPECT_FALSE(ended.contains(u.id)) << "heard of " << u.id << " after its end";
          if (u.finish != FinishReason::kNone) ended.insert(u.id);
          return false;
        },
        [&](uint64_t id) { EXPECT_FALSE(ended.contains(id)) << "planned " << id << " after its end"; }).ok());
  }
  EXPECT_EQ(ended.size(), 4u);
  EXPECT_GT(exec.overlapped, 0);
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(EngineTest, ASequenceRemovedWhileItsStepIsInFlightIsReleasedAfterItAnswers) {
  OverlappingExecutor exec;
  EngineOptions o = Options();
  o.overlap = true;
  Engine engine(o, &exec);
  ASSERT_TRUE(engine.Add(1, Prompt(3, 50)).ok());
  ASSERT_TRUE(engine.Add(2, Prompt(3, 50)).ok());
  std::map<uint64_t, int> tokens;
  auto step = [&] {
    return engine.Step([&](const SequenceUpdate& u) {
      ++tokens[u.id];
      return false;
    });
  };
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(step().ok());
  ASSERT_GT(exec.overlapped, 0);
  EXPECT_EQ(engine.Remove(1), nullptr);  // in flight: released later
  const int heard = tokens[1];
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(step().ok());
  EXPECT_EQ(tokens[1], heard);  // nobody hears of it again
  EXPECT_EQ(engine.scheduler().running(), 1);
  engine.RemoveAll();
  EXPECT_TRUE(engine.idle());
  EXPECT_EQ(engine.scheduler().blocks().used_blocks(), 0);
}

TEST(EngineTest, RejectsWhatCanNeverRun) {
  PositionExecutor exec;
  Engine engine(Options(4, 4), &exec);
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(0, 1))));
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(3, 0))));
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(10, 10))));  // 20 positions > 16
}

}  // namespace
}  // namespace gemma

namespace gemma {
namespace {

// Allows only token `next` at each step (a counter: 3, 4, 5, ...); records what it was told.
class CountingConstraint : public TokenConstraint {
 public:
  const std::vector<uint32_t>& Allowed() override {
    mask_.assign(4, 0);
    mask_[next_ / 32] |= 1u << (next_ % 32);
    ++asked;
    return mask_;
  }
  absl::Status Accept(int32_t token) override {
    if (token != next_) return absl::InvalidArgumentError(absl::StrCat("token ", token, " was not allowed"));
    accepted.push_back(token);
    ++next_;
    return absl::OkStatus();
  }
  int asked = 0;
  std::vector<int32_t> accepted;

 private:
  int next_ = 3;
  std::vector<uint32_t> mask_;
};

// Draws the lowest allowed token of a masked row (position's token otherwise); never overlaps a masked row.
class MaskExecutor : public StepExecutor {
 public:
  absl::StatusOr<std::vector<RowResult>> Execute(std::span<const StepRow> rows) override {
    std::vector<RowResult> out;
    for (const StepRow& r : rows) {
      RowResult res;
      res.sequence_id = r.sequence_id;
      if (r.sample) {
        res.sampled = true;
        res.token = r.start_pos + static_cast<int32_t>(r.tokens.size());
        for (size_t t = 0; !r.allowed_tokens.empty() && t < r.allowed_tokens.size() * 32; ++t) {
          if ((r.allowed_tokens[t / 32] >> (t % 32)) & 1u) {
            res.token = ignore_mask ? 99 : static_cast<int32_t>(t);
            break;
          }
        }
      }
      out.push_back(res);
    }
    return out;
  }
  bool ignore_mask = false;
};

TEST(EngineTest, AConstrainedSequenceDrawsOnlyAllowedTokensAndFailsOnAnother) {
  MaskExecutor exec;
  EngineOptions o = Options();
  o.overlap = true;  // never used for a constrained sequence: its next mask needs the token in flight
  Engine engine(o, &exec);
  auto constraint = std::make_shared<CountingConstraint>();
  auto spec = Prompt(5, 6);
  spec.constraint = constraint;
  auto done = RunBatch(engine, {spec, Prompt(5, 6)});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].tokens, (std::vector<int32_t>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(constraint->accepted, (*done)[0].tokens);
  EXPECT_EQ(constraint->asked, 6);
  EXPECT_EQ((*done)[1].tokens, (std::vector<int32_t>{5, 6, 7, 8, 9, 10})) << "the unconstrained row is untouched";

  MaskExecutor rogue;
  rogue.ignore_mask = true;
  Engine other(Options(), &rogue);
  auto bad = Prompt(5, 6);
  bad.constraint = std::make_shared<CountingConstraint>();
  auto failed = RunBatch(other, {bad});
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("was not allowed"), std::string::npos) << failed.status();
  EXPECT_TRUE(other.idle());
  EXPECT_EQ(other.scheduler().blocks().used_blocks(), 0);
}

}  // namespace
}  // namespace gemma
