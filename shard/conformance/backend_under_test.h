// The backends the conformance tests run the same checks on: the CPU, and the CUDA backend in f32 (which skips
// cleanly in a build without CUDA or on a machine without a device), with the tolerances each is held to.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shard/collective/collective.h"
#include "shard/model/model_weights.h"
#include "shard/runtime/backend.h"

namespace gemma::testing {

struct BackendUnderTest {
  std::string name;           // "cpu" or "cuda-f32": also the test names' prefix
  bool cuda = false;
  double logit_tolerance;     // max |logit - reference|
  double activation_tolerance;  // max |value - reference| over the reference row's L2 norm
};
// gemma-activations-tiny's README bounds for an f32 implementation (observed on the CPU: under 2e-6 and 1e-6).
inline const BackendUnderTest kCpuUnderTest{"cpu", false, 5e-5, 1e-5};
// The CUDA conformance bound on f32 logits (shard/conformance/backend_conformance_test.cc), and ten times the CPU's
// on activations: cuBLASLt sums in another order than the CPU's kernels.
inline const BackendUnderTest kCudaF32UnderTest{"cuda-f32", true, 1e-3, 1e-4};

// Empty when `b` can run here; else why not (a build without CUDA, no device), for GTEST_SKIP.
std::string WhyNotHere(const BackendUnderTest& b);

// A backend of kind `b` over this rank's weights, with room for `kv_tokens` positions; `collective`: the group's
// host collective for a tensor-parallel rank (null for one rank; the CUDA backend stages through it, as ranks
// sharing one GPU do).
absl::StatusOr<std::unique_ptr<Backend>> OpenBackendUnderTest(const BackendUnderTest& b,
                                                             std::shared_ptr<const ModelWeights> weights,
                                                             int kv_tokens,
                                                             std::shared_ptr<HostCollective> collective = nullptr);

}  // namespace gemma::testing
