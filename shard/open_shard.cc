#include "shard/open_shard.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status_macros.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cuda/cuda_module.h"

namespace gemma {
namespace {

// Tensors cross ranks over NCCL, bootstrapped over the group's host collective (which also broadcasts steps).
absl::StatusOr<std::unique_ptr<Backend>> CudaBackend(const ShardOptions& o, std::shared_ptr<const ModelWeights> weights,
                                                     Collective* bootstrap) {
  auto cuda = LoadCudaModule();
  if (!cuda.ok()) return absl::UnimplementedError(absl::StrCat("--device cuda: ", cuda.status().message()));
  const int devices = (*cuda)->device_count();
  if (devices == 0) return absl::FailedPreconditionError("--device cuda: this process sees no CUDA device");
  CudaBackendOptions options;
  options.device = o.cuda_device >= 0 ? o.cuda_device : o.rank % devices;
  if (options.device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options.device, " does not exist; this process sees ",
                                                   devices, " (0..", devices - 1, ")"));
  }
  options.precision = o.precision == "f32" ? CudaPrecision::kF32 : CudaPrecision::kBf16;
  options.limits = o.limits;
  options.lora_slots = o.gpu_lora_slots;
  options.lora_max_rank = o.gpu_lora_max_rank;
  CudaCollective tensors;
  if (o.world > 1) {
    if (bootstrap == nullptr) return absl::InvalidArgumentError("a GPU group of several ranks needs a host collective");
    auto nccl = (*cuda)->create_nccl(*bootstrap, options.device, o.timeout);
    if (!nccl.ok()) return nccl.status();
    tensors = std::shared_ptr<DeviceCollective>(std::move(*nccl));
  }
  return (*cuda)->create_backend(std::move(weights), o.kv, options, std::move(tensors));
}

}  // namespace

absl::StatusOr<OpenedShard> OpenShard(std::shared_ptr<const Checkpoint> checkpoint, const ShardOptions& o,
                                      std::shared_ptr<Collective> collective) {
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("device \"", o.device, "\" is invalid; allowed: cpu, cuda"));
  }
  if (o.precision != "bf16" && o.precision != "f32") {
    return absl::InvalidArgumentError(absl::StrCat("precision \"", o.precision, "\" is invalid; allowed: bf16, f32"));
  }
  if (o.device == "cpu" && o.precision != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("precision \"", o.precision,
                                                   "\" applies to device cuda only (the CPU computes in f32; --weights sets how its weights are stored)"));
  }
  ASSIGN_OR_RETURN(const MatMulActivations activations, ParseMatMulActivations(o.activations));
  if (o.device == "cuda" && activations != MatMulActivations::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "activations ", o.activations, " applies to device cpu (the CUDA backend computes in --precision)"));
  }
  WeightLoadOptions load;
  ASSIGN_OR_RETURN(load.precision, ParseWeightPrecision(o.weights));
  load.int4_group_size = o.int4_group_size;
  // The CUDA cache is kept in the compute precision; fp8 and int8 caches wait for their kernels.
  if (o.device == "cuda" && o.kv.dtype != KvCacheDtype::kAuto && KvCacheDtypeName(o.kv.dtype) != o.precision) {
    return absl::UnimplementedError(absl::StrCat("KV cache dtype ", KvCacheDtypeName(o.kv.dtype),
                                                 " on device cuda: the CUDA backend keeps its cache in --precision (",
                                                 o.precision, ") for now; use auto, or int8 / bf16 on the CPU"));
  }
  ASSIGN_OR_RETURN(const TensorParallel tp, TensorParallel::Create(checkpoint->config(), o.rank, o.world));
  ASSIGN_OR_RETURN(auto weights, ModelWeights::Load(checkpoint, tp, load));
  if (o.device != "cuda") RETURN_IF_ERROR(CheckMatMulActivations(activations, weights->matrix_format()));
  if (o.after_load) RETURN_IF_ERROR(o.after_load());
  OpenedShard shard{tp, std::shared_ptr<const ModelWeights>(std::move(weights)), nullptr};
  if (o.device == "cuda") {
    ASSIGN_OR_RETURN(shard.backend, CudaBackend(o, shard.weights, collective.get()));
  } else {
    CpuComputeOptions compute;
    std::string why;
    compute.matmul_activations = ActivationsThatRun(activations, &why);
    // Every rank that falls back says so: ranks on different CPUs may decide differently.
    if (!why.empty()) {
      const std::string rank = o.world > 1 ? absl::StrFormat("rank %d: ", o.rank) : "";
      std::fprintf(stderr, "%s%s\n", rank.c_str(), why.c_str());
    }
    ASSIGN_OR_RETURN(shard.backend, CpuBackend::Create(shard.weights, o.kv, std::move(collective), compute));
  }
  return shard;
}

}  // namespace gemma
