#include "router/openai/off_loop_work.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace gemma::openai {
namespace {

TEST(OffLoopWorkTest, OneThreadStartsJobsInTheOrderGiven) {
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification last;
  {
    OffLoopWork work(1);
    for (int i = 0; i < 50; ++i) {
      work.Run([&, i] {
        absl::MutexLock lock(&mu);
        order.push_back(i);
        if (i == 49) last.Notify();
      });
    }
    ASSERT_TRUE(last.WaitForNotificationWithTimeout(absl::Seconds(30)));
  }
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[i], i);
}

TEST(OffLoopWorkTest, TwoThreadsRunTwoJobsAtOnce) {
  // The first job waits for the second to start: with one job at a time it would time out.
  OffLoopWork work(2);
  absl::Notification second_started, first_done;
  std::atomic<bool> saw_second{false};
  work.Run([&] {
    saw_second = second_started.WaitForNotificationWithTimeout(absl::Seconds(30));
    first_done.Notify();
  });
  work.Run([&] { second_started.Notify(); });
  ASSERT_TRUE(first_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_TRUE(saw_second);
}

TEST(OffLoopWorkTest, DestructionWaitsForTheRunningJobAndDropsTheQueuedOnes) {
  auto work = std::make_unique<OffLoopWork>(1);
  absl::Notification running, release;
  std::atomic<bool> first_finished{false}, queued_ran{false};
  auto queued_alive = std::make_shared<int>(0);
  work->Run([&] {
    running.Notify();
    release.WaitForNotification();
    first_finished = true;
  });
  work->Run([&, keep = queued_alive] { queued_ran = true; });
  ASSERT_TRUE(running.WaitForNotificationWithTimeout(absl::Seconds(30)));
  // Released once the destructor has had ample time to drop the queue; it cannot return before the release.
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    release.Notify();
  });
  work.reset();
  releaser.join();
  EXPECT_TRUE(first_finished) << "the running job must end before the threads are joined";
  EXPECT_FALSE(queued_ran) << "a job not yet started must be dropped";
  EXPECT_EQ(queued_alive.use_count(), 1) << "the dropped job's captures must be released";
}

}  // namespace
}  // namespace gemma::openai
