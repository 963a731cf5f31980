#include "shard/checkpoint/progress.h"

#include <unistd.h>

#include <cstdio>

namespace gemma {

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total > 0 ? total : 1), enabled_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { Finish(); }

void Progress::Update(int64_t done) {
  if (!enabled_ || finished_) return;
  const int percent = static_cast<int>(100 * done / total_);
  if (percent == last_percent_) return;
  last_percent_ = percent;
  const int width = 30;
  const int filled = percent * width / 100;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %.1fs", label_.c_str(), filled, "==============================",
               width - filled, "", percent, secs);
  std::fflush(stderr);
}

void Progress::Finish() {
  if (!enabled_ || finished_) return;
  Update(total_);
  std::fputc('\n', stderr);
  finished_ = true;
}

}  // namespace gemma
