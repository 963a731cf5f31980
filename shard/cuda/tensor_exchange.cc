#include "shard/cuda/tensor_exchange.h"

#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_status.h"

namespace gemma::cuda {
namespace {

class SingleRankExchange : public TensorExchange {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  absl::Status AllReduceSum(float*, size_t, cudaStream_t) override { return absl::OkStatus(); }
  absl::Status EnqueueAllReduceSum(float*, size_t, cudaStream_t) override { return absl::OkStatus(); }
  absl::Status Wait(cudaStream_t stream) override {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
  absl::Status AllGather(const float* in, size_t count, float* out, cudaStream_t stream) override {
    if (in == out || count == 0) return absl::OkStatus();
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out, in, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    return absl::OkStatus();
  }
};

class DeviceExchange : public TensorExchange {
 public:
  explicit DeviceExchange(std::shared_ptr<DeviceCollective> c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int world() const override { return c_->world(); }
  // The collective runs on its own stream: this step's kernels must be done first.
  absl::Status AllReduceSum(float* data, size_t count, cudaStream_t stream) override {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return c_->AllReduceSum(DeviceFloats(data, count));
  }
  absl::Status AllGather(const float* in, size_t count, float* out, cudaStream_t stream) override {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return c_->AllGather(ConstDeviceFloats(in, count), DeviceFloats(out, count * static_cast<size_t>(world())));
  }
  // NCCL on the step's own stream: a graph captures it, and nothing waits until the step's end.
  absl::Status EnqueueAllReduceSum(float* data, size_t count, cudaStream_t stream) override {
    return c_->EnqueueAllReduceSum(DeviceFloats(data, count), stream);
  }
  absl::Status Wait(cudaStream_t stream) override { return c_->WaitStream(stream); }

 private:
  std::shared_ptr<DeviceCollective> c_;
};

// Ranks that share one GPU (NCCL refuses two ranks on one device) or have no NCCL: every tensor goes device ->
// pinned host -> host collective -> device. Slower than NCCL by two copies per call; for tests and odd setups.
class StagedHostExchange : public TensorExchange {
 public:
  StagedHostExchange(std::shared_ptr<HostCollective> c, int device) : c_(std::move(c)), device_(device) {}
  ~StagedHostExchange() override {
    if (host_ != nullptr) cudaFreeHost(host_);
  }
  int rank() const override { return c_->rank(); }
  int world() const override { return c_->world(); }

  absl::Status AllReduceSum(float* data, size_t count, cudaStream_t stream) override {
    if (auto s = ToHost(data, count, stream); !s.ok()) return s;
    if (auto s = c_->AllReduceSum(host_, count); !s.ok()) return s;
    return ToDevice(host_, count, data, stream);
  }

  // Device -> pinned host, the host collective in a host function on the stream, host -> device: all stream-ordered,
  // so a graph captures the three as nodes. The host function runs on the CUDA runtime's thread while the step's
  // thread waits in Wait, so the collective is never used by two threads at once.
  absl::Status EnqueueAllReduceSum(float* data, size_t count, cudaStream_t stream) override {
    if (count == 0) return absl::OkStatus();
    if (count > capacity_) {
      return absl::FailedPreconditionError(absl::StrCat("an enqueued all-reduce of ", count,
                                                        " floats exceeds the ", capacity_, " reserved"));
    }
    auto& call = calls_[count];  // one record per size: graphs keep its address
    if (call == nullptr) call = std::make_unique<HostCall>(HostCall{this, count});
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_, data, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaLaunchHostFunc(stream, &StagedHostExchange::RunHostCall, call.get()));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(data, host_, count * sizeof(float), cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }
  absl::Status Wait(cudaStream_t stream) override {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    std::lock_guard<std::mutex> lock(error_mu_);
    return host_error_;  // stays failed: the ranks no longer agree on the step
  }
  absl::Status Reserve(size_t floats) override { return Grow(floats); }

  absl::Status AllGather(const float* in, size_t count, float* out, cudaStream_t stream) override {
    const size_t all = count * static_cast<size_t>(world());
    if (auto s = Grow(count + all); !s.ok()) return s;
    if (auto s = ToHost(in, count, stream); !s.ok()) return s;
    if (auto s = c_->AllGather(host_, count, host_ + count); !s.ok()) return s;
    return ToDevice(host_ + count, all, out, stream);
  }

 private:
  struct HostCall {
    StagedHostExchange* self;
    size_t count;
  };
  static void RunHostCall(void* arg) {
    const auto* call = static_cast<const HostCall*>(arg);
    StagedHostExchange* self = call->self;
    {
      std::lock_guard<std::mutex> lock(self->error_mu_);
      if (!self->host_error_.ok()) return;
    }
    absl::Status s = self->c_->AllReduceSum(self->host_, call->count);
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(self->error_mu_);
      self->host_error_ = std::move(s);
    }
  }
  // Moving host_ would leave captured graphs copying to freed memory: once calls_ holds a record, it never moves.
  absl::Status Grow(size_t floats) {
    if (floats <= capacity_) return absl::OkStatus();
    if (!calls_.empty()) {
      return absl::FailedPreconditionError("the staging buffer cannot grow once sums were enqueued");
    }
    GEMMA_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (host_ != nullptr) GEMMA_CUDA_RETURN_IF_ERROR(cudaFreeHost(host_));
    host_ = nullptr;
    capacity_ = 0;
    void* p = nullptr;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&p, floats * sizeof(float)));
    host_ = static_cast<float*>(p);
    capacity_ = floats;
    return absl::OkStatus();
  }
  // Into host_[0, count), once the stream's earlier work (which wrote `in`, and read host_ last time) is done.
  absl::Status ToHost(const float* in, size_t count, cudaStream_t stream) {
    if (auto s = Grow(count); !s.ok()) return s;
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_, in, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
  // Ordered on the stream before the kernels that read `out`; the next ToHost waits for it before reusing host_.
  absl::Status ToDevice(const float* host, size_t count, float* out, cudaStream_t stream) {
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out, host, count * sizeof(float), cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  std::shared_ptr<HostCollective> c_;
  int device_;
  float* host_ = nullptr;  // pinned
  size_t capacity_ = 0;    // floats
  std::map<size_t, std::unique_ptr<HostCall>> calls_;
  std::mutex error_mu_;
  absl::Status host_error_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TensorExchange>> MakeTensorExchange(const CudaCollective& collective, int device) {
  if (const auto* d = std::get_if<std::shared_ptr<DeviceCollective>>(&collective); d != nullptr && *d != nullptr) {
    return std::make_unique<DeviceExchange>(*d);
  }
  if (const auto* h = std::get_if<std::shared_ptr<HostCollective>>(&collective); h != nullptr && *h != nullptr) {
    return std::make_unique<StagedHostExchange>(*h, device);
  }
  return std::make_unique<SingleRankExchange>();
}

}  // namespace gemma::cuda
