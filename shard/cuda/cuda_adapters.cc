#include "shard/cuda/cuda_adapters.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_status.h"

namespace gemma::cuda {

CudaAdapters::Shape CudaAdapters::ShapeOf(const ModelConfig& c, const TensorParallel& tp, LoraTarget t) {
  const int64_t H = c.hidden_size, q_dim = int64_t{tp.num_q_heads} * c.head_dim,
                kv_dim = int64_t{tp.num_kv_heads} * c.head_dim, I = tp.ffn_size;
  switch (t) {
    case LoraTarget::kQ: return {H, q_dim};
    case LoraTarget::kK:
    case LoraTarget::kV: return {H, kv_dim};
    case LoraTarget::kO: return {q_dim, H};
    case LoraTarget::kGate:
    case LoraTarget::kUp: return {H, I};
    case LoraTarget::kDown: return {I, H};
  }
  return {};
}

int64_t CudaAdapters::SlotBytes(const ModelConfig& c, const TensorParallel& tp, int max_rank) {
  int64_t per_layer = 0;
  for (int t = 0; t < kNumLoraTargets; ++t) {
    const Shape s = ShapeOf(c, tp, static_cast<LoraTarget>(t));
    per_layer += int64_t{max_rank} * (s.in + s.out);
  }
  return per_layer * c.num_layers * 4;
}

int64_t CudaAdapters::ScratchBytes(int max_tokens) {
  return int64_t{kLoraMaxSplits} * max_tokens * kLoraMaxRank * 4 + (1 + 4 * int64_t{max_tokens}) * 4;
}

CudaAdapters::CudaAdapters(const ModelConfig& config, const TensorParallel& tp, int slots, int max_rank,
                           int max_tokens)
    : num_layers_(config.num_layers), max_rank_(max_rank), max_tokens_(max_tokens), slots_(slots) {
  for (int t = 0; t < kNumLoraTargets; ++t) shapes_[t] = ShapeOf(config, tp, static_cast<LoraTarget>(t));
  slot_floats_ = SlotBytes(config, tp, max_rank) / 4;
}

CudaAdapters::~CudaAdapters() {
  if (host_layout_ != nullptr) cudaFreeHost(host_layout_);
}

absl::StatusOr<std::unique_ptr<CudaAdapters>> CudaAdapters::Create(const ModelConfig& config, const TensorParallel& tp,
                                                                   int slots, int max_rank, int max_tokens,
                                                                   cudaStream_t stream) {
  if (slots < 0) return absl::InvalidArgumentError(absl::StrCat("LoRA slots ", slots, "; allowed: 0 or more"));
  if (max_rank < 1 || max_rank > kLoraMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoRA slot rank ", max_rank, " is outside the allowed 1 to ", kLoraMaxRank));
  }
  std::unique_ptr<CudaAdapters> a(new CudaAdapters(config, tp, slots, max_rank, max_tokens));
  if (slots == 0) return a;
  const std::string why = absl::StrCat(" (", slots, " LoRA slots of rank ", max_rank,
                                       "; allowed: fewer slots or a lower slot rank, 0 slots for none)");
  auto weights = DeviceBuffer::Allocate(static_cast<size_t>(slots * a->slot_floats_ * 4), "LoRA adapter slots");
  if (!weights.ok()) return absl::InvalidArgumentError(absl::StrCat(weights.status().message(), why));
  a->weights_ = std::move(*weights);
  a->host_entries_.assign(static_cast<size_t>(slots) * a->num_layers_ * kNumLoraTargets, LoraDeviceEntry{});
  auto entries = DeviceBuffer::Allocate(a->host_entries_.size() * sizeof(LoraDeviceEntry), "LoRA adapter table");
  auto partial = DeviceBuffer::Allocate(static_cast<size_t>(kLoraMaxSplits) * max_tokens * kLoraMaxRank * 4,
                                        "LoRA partial sums");
  auto layout = DeviceBuffer::Allocate((1 + 4 * static_cast<size_t>(max_tokens)) * 4, "LoRA step layout");
  for (const auto* b : {&entries, &partial, &layout}) {
    if (!b->ok()) return absl::InvalidArgumentError(absl::StrCat(b->status().message(), why));
  }
  a->entries_ = std::move(*entries);
  a->partial_ = std::move(*partial);
  a->layout_ = std::move(*layout);
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&a->host_layout_), a->layout_.bytes()));
  std::fill_n(a->host_layout_, a->layout_.bytes() / 4, 0);
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a->entries_.get(), 0, a->entries_.bytes(), stream));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a->layout_.get(), 0, a->layout_.bytes(), stream));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  a->reserved_bytes_ = static_cast<int64_t>(a->weights_.bytes() + a->entries_.bytes() + a->partial_.bytes() +
                                            a->layout_.bytes());
  return a;
}

int64_t CudaAdapters::AOffset(int layer, LoraTarget t) const {
  int64_t offset = 0;
  for (int u = 0; u < static_cast<int>(t); ++u) offset += max_rank_ * (shapes_[u].in + shapes_[u].out);
  return static_cast<int64_t>(layer) * (slot_floats_ / num_layers_) + offset;
}

absl::Status CudaAdapters::Upload(const LoraAdapter& adapter, int slot, cudaStream_t stream) {
  if (adapter.rank > max_rank_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoRA adapter \"", adapter.name, "\" has rank ", adapter.rank, "; this GPU's adapter slots hold rank 1 to ",
        max_rank_, " (raise the slot rank, CudaBackendOptions::lora_max_rank / --gpu_lora_max_rank)"));
  }
  if (static_cast<int>(adapter.layers.size()) != num_layers_) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA adapter \"", adapter.name, "\" has ", adapter.layers.size(),
                                                      " layers; the model has ", num_layers_));
  }
  float* base = weights_.as<float>() + static_cast<int64_t>(slot) * slot_floats_;
  for (int layer = 0; layer < num_layers_; ++layer) {
    for (int ti = 0; ti < kNumLoraTargets; ++ti) {
      const LoraTarget t = static_cast<LoraTarget>(ti);
      const LoraPair& p = adapter.at(layer, t);
      LoraDeviceEntry& e = host_entries_[EntryIndex(slot, layer, t)];
      e = LoraDeviceEntry{};
      if (p.rank == 0) continue;
      const Shape s = shapes_[ti];
      if (p.rank > max_rank_ || p.in != s.in || p.out != s.out) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LoRA adapter \"", adapter.name, "\" layer ", layer, " ", LoraTargetName(t), ": rank ", p.rank, ", [",
            p.out, ", ", p.in, "]; this rank needs rank at most ", max_rank_, " and [", s.out, ", ", s.in, "]"));
      }
      float* a = base + AOffset(layer, t);
      float* bt = base + BOffset(layer, t);
      GEMMA_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(a, p.a.data(), p.a.size() * 4, cudaMemcpyHostToDevice, stream));
      // The loader keeps B^T [r, out], the layout the expand reads.
      GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(bt, p.b.data(), p.b.size() * 4, cudaMemcpyHostToDevice, stream));
      e = LoraDeviceEntry{a, bt, p.rank, adapter.scaling};
    }
  }
  const int64_t first = EntryIndex(slot, 0, LoraTarget::kQ), count = int64_t{num_layers_} * kNumLoraTargets;
  GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(entries_.as<LoraDeviceEntry>() + first, host_entries_.data() + first,
                                             count * sizeof(LoraDeviceEntry), cudaMemcpyHostToDevice, stream));
  GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::StatusOr<int> CudaAdapters::Place(const LoraAdapter& adapter, cudaStream_t stream) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.used && s.id == adapter.id && s.name == adapter.name && s.dir == adapter.dir &&
        s.fingerprint == adapter.fingerprint && (adapter.id != 0 || s.address == &adapter)) {
      return static_cast<int>(i);
    }
  }
  // A free slot, else the least recently used one this step does not hold.
  int chosen = -1;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.used && s.last_step == step_) continue;
    if (chosen < 0 || !s.used || (slots_[chosen].used && s.last_step < slots_[chosen].last_step)) {
      chosen = static_cast<int>(i);
      if (!s.used) break;
    }
  }
  if (chosen < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the step's rows name more LoRA adapters than this GPU's ", slots_.size(),
        " adapter slots hold (CudaBackendOptions::lora_slots / --gpu_lora_slots)"));
  }
  Slot& s = slots_[chosen];
  s = Slot{};  // empty until the upload has landed: a failed upload leaves no half adapter behind a name
  if (auto st = Upload(adapter, chosen, stream); !st.ok()) {
    // Its table rows may name half an upload: no step may use them.
    const int64_t first = EntryIndex(chosen, 0, LoraTarget::kQ);
    std::fill_n(host_entries_.begin() + first, int64_t{num_layers_} * kNumLoraTargets, LoraDeviceEntry{});
    cudaMemcpyAsync(entries_.as<LoraDeviceEntry>() + first, host_entries_.data() + first,
                    int64_t{num_layers_} * kNumLoraTargets * sizeof(LoraDeviceEntry), cudaMemcpyHostToDevice, stream);
    cudaStreamSynchronize(stream);
    return st;
  }
  s = Slot{&adapter, adapter.id, adapter.name, adapter.dir, adapter.fingerprint, true, step_};
  return chosen;
}

absl::Status CudaAdapters::Prepare(std::span<const SequenceStep> batch, cudaStream_t stream) {
  ++step_;
  num_chunks_ = 0;
  targets_ = 0;
  bool any = false;
  for (const SequenceStep& s : batch) any = any || s.adapter != nullptr;
  if (!any) return absl::OkStatus();
  if (slots_.empty()) {
    return absl::InvalidArgumentError(
        "a row names a LoRA adapter but this GPU reserved no adapter slots (CudaBackendOptions::lora_slots / "
        "--gpu_lora_slots is 0)");
  }
  // Rows grouped by adapter in order of first appearance (as the CPU groups them), each group's tokens in order.
  struct Group {
    const LoraAdapter* adapter;
    int slot;
    std::vector<int32_t> tokens;
  };
  std::vector<Group> groups;
  int32_t t = 0;
  for (const SequenceStep& s : batch) {
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    if (s.adapter != nullptr) {
      auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.adapter == s.adapter; });
      if (it == groups.end()) {
        auto slot = Place(*s.adapter, stream);
        if (!slot.ok()) return slot.status();
        slots_[*slot].last_step = step_;
        it = groups.insert(groups.end(), Group{s.adapter, *slot, {}});
      }
      for (int32_t j = 0; j < n; ++j) it->tokens.push_back(t + j);
    }
    t += n;
  }
  if (t > max_tokens_) {
    return absl::InternalError(absl::StrCat("a step of ", t, " tokens exceeds the ", max_tokens_,
                                            " the LoRA buffers were planned for"));
  }
  // [num_chunks][chunk_slot][chunk_first][chunk_count][tokens], max_tokens_ each.
  int32_t* chunk_slot = host_layout_ + 1;
  int32_t* chunk_first = chunk_slot + max_tokens_;
  int32_t* chunk_count = chunk_first + max_tokens_;
  int32_t* tokens = chunk_count + max_tokens_;
  int32_t at = 0;
  for (const Group& g : groups) {
    for (size_t i = 0; i < g.tokens.size(); i += kLoraChunkTokens) {
      chunk_slot[num_chunks_] = g.slot;
      chunk_first[num_chunks_] = at + static_cast<int32_t>(i);
      chunk_count[num_chunks_++] = static_cast<int32_t>(std::min<size_t>(kLoraChunkTokens, g.tokens.size() - i));
    }
    std::copy(g.tokens.begin(), g.tokens.end(), tokens + at);
    at += static_cast<int32_t>(g.tokens.size());
  }
  // Every projection, whatever the step's adapters adapt: a decode graph captured with adapters then serves any mix
  // of them (one graph per batch size, not one per set of adapted projections, whose count the memory plan could
  // not bound); the kernels skip an adapter's projections of rank 0 on the device.
  targets_ = (1u << kNumLoraTargets) - 1;
  host_layout_[0] = num_chunks_;
  return absl::OkStatus();
}

absl::Status CudaAdapters::EnqueueLayout(cudaStream_t stream) {
  // The whole buffer, whatever the step uses: a graph replays the copy at the size it was captured with.
  GEMMA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(layout_.get(), host_layout_, layout_.bytes(), cudaMemcpyHostToDevice, stream));
  return absl::OkStatus();
}

absl::Status CudaAdapters::Add(int layer, LoraTarget target, const void* x, int64_t ldx, Dtype x_type, float* out,
                               int64_t ldo, int max_chunks, cudaStream_t stream) {
  if (num_chunks_ == 0 || (targets_ & (1u << static_cast<int>(target))) == 0) return absl::OkStatus();
  const int32_t* base = layout_.as<int32_t>();
  const LoraStepLayout layout{base, base + 1, base + 1 + max_tokens_, base + 1 + 2 * int64_t{max_tokens_},
                              base + 1 + 3 * int64_t{max_tokens_}};
  const LoraDeviceEntry* entries = entries_.as<LoraDeviceEntry>() + EntryIndex(0, layer, target);
  const int64_t slot_stride = int64_t{num_layers_} * kNumLoraTargets;
  const int64_t split_stride = int64_t{max_tokens_} * kLoraMaxRank;
  const Shape s = shapes_[static_cast<int>(target)];
  GEMMA_CUDA_RETURN_IF_ERROR(LaunchLoraShrink(x, ldx, s.in, x_type, layout, entries, slot_stride, max_chunks,
                                              max_rank_, partial_.as<float>(), split_stride, stream));
  GEMMA_CUDA_RETURN_IF_ERROR(LaunchLoraExpand(partial_.as<float>(), LoraSplits(s.in), split_stride, layout, entries,
                                              slot_stride, max_chunks, out, ldo, s.out, stream));
  return absl::OkStatus();
}

}  // namespace gemma::cuda
