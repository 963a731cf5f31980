// A few threads for work too slow for the HTTP loop (tokenizing a long prompt can take seconds, and the loop
// serves every other exchange, /health included). Jobs start in the order given, several at once.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace gemma::openai {

// Thread-safe: Run may be called from any thread, until destruction begins.
class OffLoopWork {
 public:
  // The threads start with the first job: a router without the HTTP API never starts them.
  explicit OffLoopWork(int threads);
  // Drops the jobs not yet started (their results would go nowhere: the loop has stopped), waits for those
  // running, then joins the threads.
  ~OffLoopWork();
  OffLoopWork(const OffLoopWork&) = delete;
  OffLoopWork& operator=(const OffLoopWork&) = delete;

  void Run(std::function<void()> job);

 private:
  void Loop();
  bool HasJobOrStops() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); }

  const int thread_count_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gemma::openai
