// A few threads for work too slow for the HTTP loop (tokenizing a long prompt can take seconds, and the loop
// serves every other exchange, /health included). Jobs run in the order given, several at once.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gemma::openai {

class OffLoopWork {
 public:
  explicit OffLoopWork(int threads);
  // Runs what is queued, then joins the threads.
  ~OffLoopWork();
  OffLoopWork(const OffLoopWork&) = delete;
  OffLoopWork& operator=(const OffLoopWork&) = delete;

  void Run(std::function<void()> job);

 private:
  void Loop();
  bool HasJobOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); }

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace gemma::openai
