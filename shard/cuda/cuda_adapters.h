// LoRA adapters on one CUDA rank: a fixed number of slots in device memory, reserved at start (so that no step
// allocates), each holding one adapter's A and B (this rank's slices, as the loader cut them for the CPU too), and
// each step's layout of its adapter rows for the shrink and expand kernels (lora_kernels.h).
//
// The backend learns of adapters only through the steps' rows (SequenceStep::adapter). An adapter goes to the
// device the first time a step uses it and stays while slots last; when a step needs a slot and none is free, the
// least recently used adapter that the step does not use leaves. An adapter's identity is its store id with its
// name, folder and file fingerprint (ids are never reused, and a changed folder is refused by the store), so one
// that the host's store dropped and read again is still resident here; adapters made outside a store (id 0) are
// also told apart by address. Not thread-safe: one step at a time, as the backend.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/kernels.h"
#include "shard/cuda/lora_kernels.h"
#include "shard/model/lora_adapter.h"
#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"
#include "shard/runtime/backend.h"

namespace gemma::cuda {

class CudaAdapters {
 public:
  // This rank's [in, out] of a projection, as its adapter slices are.
  struct Shape {
    int64_t in = 0, out = 0;
  };
  static Shape ShapeOf(const ModelConfig& c, const TensorParallel& tp, LoraTarget t);
  // Device bytes of one slot: every projection of every layer at rank max_rank.
  static int64_t SlotBytes(const ModelConfig& c, const TensorParallel& tp, int max_rank);
  // Device bytes of the step scratch (the shrink's partial sums and the layout) for steps of max_tokens.
  static int64_t ScratchBytes(int max_tokens);

  // Reserves `slots` slots of rank up to max_rank (1..kLoraMaxRank) and the scratch of steps of max_tokens tokens.
  // slots 0 reserves nothing, and a step with an adapter row is then refused. ResourceExhausted when the device has
  // too little memory, naming what to lower.
  static absl::StatusOr<std::unique_ptr<CudaAdapters>> Create(const ModelConfig& config, const TensorParallel& tp,
                                                              int slots, int max_rank, int max_tokens,
                                                              cudaStream_t stream);
  ~CudaAdapters();
  int64_t reserved_bytes() const { return reserved_bytes_; }
  int max_rank() const { return max_rank_; }

  // Places the adapters the step's rows name (uploading those not resident, and waiting for the upload) and lays
  // out its adapter tokens on the host. Before any of the step's device work. InvalidArgument (the rows cannot run
  // here: the engine then retries them one by one, and the group goes on) when the step names more adapters than
  // there are slots, an adapter of a rank above max_rank or sliced for another shape, or no slots were reserved.
  // Nothing of the step runs then.
  absl::Status Prepare(std::span<const SequenceStep> batch, cudaStream_t stream);
  // Whether the prepared step has adapter rows; targets(): the projections whose terms the step launches (all seven
  // once any row has an adapter, so that one decode graph serves every mix of adapters).
  bool active() const { return num_chunks_ > 0; }
  uint32_t targets() const { return targets_; }
  // Copies the step's layout to the device (on `stream`; a decode graph captures it).
  absl::Status EnqueueLayout(cudaStream_t stream);
  // out[t, :out] += scaling * (x[t, :in] A^T) B^T for the step's adapter tokens t (x of `x_type`, rows ldx apart;
  // out f32, rows ldo apart), when some adapter of the step adapts `target`. max_chunks: the grid's chunk capacity,
  // the step's token count for a graph (any mix of adapters replays it), else the step's own chunk count.
  absl::Status Add(int layer, LoraTarget target, const void* x, int64_t ldx, Dtype x_type, float* out, int64_t ldo,
                   int max_chunks, cudaStream_t stream);
  int num_chunks() const { return num_chunks_; }

 private:
  struct Slot {
    const LoraAdapter* address = nullptr;  // for adapters of id 0
    uint32_t id = 0;
    std::string name, dir, fingerprint;
    bool used = false;
    uint64_t last_step = 0;  // the step that last used it
  };
  CudaAdapters(const ModelConfig& config, const TensorParallel& tp, int slots, int max_rank, int max_tokens);
  // The slot holding `adapter`, uploading it (into a free slot, or the least recently used one the step does not
  // hold) when none does.
  absl::StatusOr<int> Place(const LoraAdapter& adapter, cudaStream_t stream);
  absl::Status Upload(const LoraAdapter& adapter, int slot, cudaStream_t stream);
  // Offsets (floats) of a projection's A and B^T inside a slot.
  int64_t AOffset(int layer, LoraTarget t) const;
  int64_t BOffset(int layer, LoraTarget t) const { return AOffset(layer, t) + max_rank_ * shapes_[static_cast<int>(t)].in; }
  int64_t EntryIndex(int slot, int layer, LoraTarget t) const {
    return (static_cast<int64_t>(slot) * num_layers_ + layer) * kNumLoraTargets + static_cast<int>(t);
  }

  const int num_layers_, max_rank_, max_tokens_;
  Shape shapes_[kNumLoraTargets];
  int64_t slot_floats_ = 0, reserved_bytes_ = 0;
  std::vector<Slot> slots_;
  uint64_t step_ = 0;
  DeviceBuffer weights_;   // [slots][slot_floats_]
  DeviceBuffer entries_;   // LoraDeviceEntry [slots][layers][kNumLoraTargets]
  std::vector<LoraDeviceEntry> host_entries_;
  DeviceBuffer partial_;   // [kLoraMaxSplits][max_tokens][kLoraMaxRank]
  DeviceBuffer layout_;    // int32: num_chunks, then chunk_slot, chunk_first, chunk_count, tokens [max_tokens] each
  int32_t* host_layout_ = nullptr;  // pinned, the same layout
  int num_chunks_ = 0;
  uint32_t targets_ = 0;
};

}  // namespace gemma::cuda
