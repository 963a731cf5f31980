// A progress bar for long work (loading, writing, benchmark sweeps); drawn only on a terminal.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace gemma {

// Not thread-safe: one owner calls Update.
class Progress {
 public:
  Progress(std::string label, int64_t total);
  ~Progress();
  void Update(int64_t done);
  void Finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool finished_ = false;
  int last_percent_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace gemma
