// Before a group connects its collectives: every rank announces itself at rank 0's rendezvous and waits, with a
// long timeout of its own, until all ranks have (pods of one group may be scheduled and pull images minutes apart).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace gemma {

struct GroupWaitOptions {
  int rank = 0;
  int world = 1;
  std::string leader;  // host:port of rank 0's rendezvous service
  std::chrono::milliseconds timeout{600000};
  std::chrono::milliseconds progress_every{10000};
  // Where progress goes ("rank 1: 2 of 4 ranks arrived (0, 1); waiting for 2, 3 ...").
  std::function<void(const std::string&)> log;
  // The round this wait belongs to, as the past-tense word its messages use: a group meets once to connect
  // ("arrived") and again once every rank has loaded its weights ("loaded"), each round under its own keys.
  std::string stage = "arrived";
};

// OK once every rank has reached `stage`; DeadlineExceeded naming the ranks (or the leader) that never did.
absl::Status WaitForGroup(const GroupWaitOptions& options);

}  // namespace gemma
