#include "engine/engine.h"

#include "engine/run_batch.h"
#include <map>

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

TEST(EngineTest, RejectsWhatCanNeverRun) {
  PositionExecutor exec;
  Engine engine(Options(4, 4), &exec);
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(0, 1))));
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(3, 0))));
  EXPECT_TRUE(absl::IsInvalidArgument(engine.Add(1, Prompt(10, 10))));  // 20 positions > 16
}

}  // namespace
}  // namespace gemma
