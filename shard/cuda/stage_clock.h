// Device time per stage of a step: an event on the stream at each stage switch, read once the stream has finished.
// The host's StageTimer only sees how long launching took.
#pragma once

#include <cuda_runtime.h>

#include <vector>

namespace gemma::cuda {

class StageClock {
 public:
  StageClock() = default;
  StageClock(const StageClock&) = delete;
  StageClock& operator=(const StageClock&) = delete;
  ~StageClock() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  // Forgets an unfinished step; from here on the stream's time goes to `stage`.
  void Start(double* stage, cudaStream_t stream) {
    stages_.clear();
    Mark(stage, stream);
  }
  // From here on the stream's time goes to `stage`. Best effort: without an event, the time joins the last stage.
  void Mark(double* stage, cudaStream_t stream) {
    if (stages_.size() == events_.size()) {
      cudaEvent_t e = nullptr;
      if (cudaEventCreate(&e) != cudaSuccess) return;
      events_.push_back(e);
    }
    if (cudaEventRecord(events_[stages_.size()], stream) != cudaSuccess) return;
    stages_.push_back(stage);
  }
  // Once the stream has finished, after a last Mark: adds each interval to its stage.
  void Collect() {
    for (size_t i = 1; i < stages_.size(); ++i) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, events_[i - 1], events_[i]) == cudaSuccess) *stages_[i - 1] += ms / 1e3;
    }
    stages_.clear();
  }

 private:
  std::vector<cudaEvent_t> events_;
  std::vector<double*> stages_;
};

}  // namespace gemma::cuda
