// Whether a thread's kernel launches ask to overlap the kernel before them (launch.cuh), in plain C++ for the
// code that runs steps.
#pragma once

namespace gemma::cuda {

// Whether this thread's launches (a backend's step) ask for programmatic overlap. Set for a scope.
bool ProgrammaticLaunchEnabled();
class ProgrammaticLaunchScope {
 public:
  explicit ProgrammaticLaunchScope(bool on);
  ~ProgrammaticLaunchScope();
  ProgrammaticLaunchScope(const ProgrammaticLaunchScope&) = delete;
  ProgrammaticLaunchScope& operator=(const ProgrammaticLaunchScope&) = delete;

 private:
  bool before_;
};

}  // namespace gemma::cuda
