#include "router/openai/off_loop_work.h"

#include <utility>

namespace gemma::openai {

OffLoopWork::OffLoopWork(int threads) : thread_count_(threads) {}

OffLoopWork::~OffLoopWork() {
  std::deque<std::function<void()>> dropped;
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    dropped.swap(jobs_);  // destroyed outside the lock: a job's captures may take locks of their own
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

void OffLoopWork::Run(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
  if (threads_.empty()) {
    for (int i = 0; i < thread_count_; ++i) threads_.emplace_back([this] { Loop(); });
  }
}

void OffLoopWork::Loop() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &OffLoopWork::HasJobOrStops));
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace gemma::openai
