#include "shard/collective/nccl_collective.h"

#include "absl/strings/str_cat.h"

#ifdef GEMMA_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>
#include <utility>
#endif

namespace gemma {

#ifndef GEMMA_HAVE_NCCL

bool NcclAvailable() { return false; }

absl::StatusOr<std::unique_ptr<DeviceCollective>> CreateNcclCollective(HostCollective&, int, std::chrono::milliseconds) {
  return absl::UnimplementedError("this build has no NCCL (the CUDA toolkit or NCCL was not found at build time)");
}

#else

namespace {

absl::Status CudaError(cudaError_t e, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(ncclResult_t r, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", what, ": ", ncclGetErrorString(r)));
}

#define GEMMA_CUDA(expr)                                                           \
  do {                                                                             \
    const cudaError_t _e = (expr);                                                 \
    if (_e != cudaSuccess) return CudaError(_e, #expr, __FILE__, __LINE__);        \
  } while (0)

#define GEMMA_NCCL(expr)                                                           \
  do {                                                                             \
    const ncclResult_t _r = (expr);                                                \
    if (_r != ncclSuccess && _r != ncclInProgress) return NcclError(_r, #expr, __FILE__, __LINE__); \
  } while (0)

class NcclCollective : public DeviceCollective {
 public:
  NcclCollective(int rank, int world, int device, ncclComm_t comm, cudaStream_t stream, std::chrono::milliseconds timeout)
      : rank_(rank), world_(world), device_(device), comm_(comm), stream_(stream), timeout_(timeout) {}
  ~NcclCollective() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) (broken_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_));
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (staging_ != nullptr) cudaFree(staging_);
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  absl::Status AllReduceSum(DeviceFloats data) override {
    if (data.count == 0) return absl::OkStatus();
    return Run("all-reduce", [&] {
      return ncclAllReduce(data.data, data.data, data.count, ncclFloat32, ncclSum, comm_, stream_);
    });
  }

  absl::Status AllGather(ConstDeviceFloats in, DeviceFloats out) override {
    if (out.count != in.count * static_cast<size_t>(world_)) {
      return absl::InvalidArgumentError(absl::StrCat("all-gather of ", in.count, " floats per rank needs ",
                                                     in.count * world_, " output floats, got ", out.count));
    }
    return Run("all-gather", [&] { return ncclAllGather(in.data, out.data, in.count, ncclFloat32, comm_, stream_); });
  }

  absl::Status Broadcast(std::string* bytes, int root) override {
    if (bytes == nullptr) return absl::InvalidArgumentError("broadcast given no bytes");
    if (root < 0 || root >= world_) {
      return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " is outside [0, ", world_, ")"));
    }
    uint64_t size = bytes->size();
    if (auto s = Stage(sizeof(size)); !s.ok()) return s;
    // On the collective's stream: a plain cudaMemcpy from pageable memory may return before its DMA lands, and
    // nothing would order it before the broadcast on this non-blocking stream.
    GEMMA_CUDA(cudaMemcpyAsync(staging_, &size, sizeof(size), cudaMemcpyHostToDevice, stream_));
    if (auto s = Run("broadcast", [&] { return ncclBroadcast(staging_, staging_, sizeof(size), ncclUint8, root, comm_, stream_); });
        !s.ok()) {
      return s;
    }
    GEMMA_CUDA(cudaMemcpy(&size, staging_, sizeof(size), cudaMemcpyDeviceToHost));
    if (rank_ != root) bytes->resize(size);
    if (size == 0) return absl::OkStatus();
    if (auto s = Stage(size); !s.ok()) return s;
    if (rank_ == root) GEMMA_CUDA(cudaMemcpyAsync(staging_, bytes->data(), size, cudaMemcpyHostToDevice, stream_));
    if (auto s = Run("broadcast", [&] { return ncclBroadcast(staging_, staging_, size, ncclUint8, root, comm_, stream_); });
        !s.ok()) {
      return s;
    }
    if (rank_ != root) GEMMA_CUDA(cudaMemcpy(bytes->data(), staging_, size, cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }

  absl::Status Barrier() override {
    if (auto s = Stage(sizeof(float)); !s.ok()) return s;
    return AllReduceSum(DeviceFloats(static_cast<float*>(staging_), 1));
  }

  absl::Status EnqueueAllReduceSum(DeviceFloats data, void* cuda_stream) override {
    if (broken_) return absl::UnavailableError("all-reduce: the NCCL communicator failed earlier");
    if (data.count == 0) return absl::OkStatus();
    GEMMA_CUDA(cudaSetDevice(device_));
    ncclResult_t r = ncclAllReduce(data.data, data.data, data.count, ncclFloat32, ncclSum, comm_,
                                   static_cast<cudaStream_t>(cuda_stream));
    // A nonblocking communicator may still be enqueueing when the call returns; what the caller puts on the stream
    // next (or captures into a graph) must come after it, so wait for the enqueue (not for the sum).
    const auto start = std::chrono::steady_clock::now();
    while (r == ncclInProgress) {
      if (std::chrono::steady_clock::now() - start > timeout_) {
        broken_ = true;
        return absl::DeadlineExceededError("all-reduce: NCCL did not finish enqueueing within the timeout");
      }
      std::this_thread::yield();
      ncclCommGetAsyncError(comm_, &r);
    }
    if (r != ncclSuccess) {
      broken_ = true;
      return NcclError(r, "all-reduce", __FILE__, __LINE__);
    }
    return absl::OkStatus();
  }

  // Everything enqueued on the caller's stream, polled like the calls above: a dead peer fails it in time.
  absl::Status WaitStream(void* cuda_stream) override {
    return Run("a step's all-reduces", [] { return ncclSuccess; }, static_cast<cudaStream_t>(cuda_stream));
  }

 private:
  absl::Status Stage(size_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    GEMMA_CUDA(cudaSetDevice(device_));
    if (staging_ != nullptr) GEMMA_CUDA(cudaFree(staging_));
    staging_ = nullptr;
    GEMMA_CUDA(cudaMalloc(&staging_, bytes));
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  // Enqueues `op`, then polls the stream and the communicator until the op is
  // done, NCCL reports an async error, or the timeout passes (then aborts).
  template <typename Op>
  absl::Status Run(const char* what, Op&& op) {
    return Run(what, std::forward<Op>(op), stream_);
  }
  template <typename Op>
  absl::Status Run(const char* what, Op&& op, cudaStream_t stream) {
    if (broken_) return absl::UnavailableError(absl::StrCat(what, ": the NCCL communicator failed earlier"));
    GEMMA_CUDA(cudaSetDevice(device_));
    const ncclResult_t r = op();
    if (r != ncclSuccess && r != ncclInProgress) {
      broken_ = true;
      return NcclError(r, what, __FILE__, __LINE__);
    }
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        broken_ = true;
        return CudaError(q, what, __FILE__, __LINE__);
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        broken_ = true;
        return absl::UnavailableError(absl::StrCat(what, ": a peer rank failed: ", ncclGetErrorString(async)));
      }
      if (std::chrono::steady_clock::now() - start > timeout_) {
        broken_ = true;
        return absl::DeadlineExceededError(absl::StrCat(what, ": a peer rank did not answer within ", timeout_.count(),
                                                        " ms; the communicator was aborted"));
      }
      std::this_thread::yield();
    }
  }

  int rank_, world_, device_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  std::chrono::milliseconds timeout_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  bool broken_ = false;
};

}  // namespace

bool NcclAvailable() { return true; }

absl::StatusOr<std::unique_ptr<DeviceCollective>> CreateNcclCollective(HostCollective& bootstrap, int device,
                                                                 std::chrono::milliseconds timeout) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError("NCCL needs a CUDA device and none is present");
  }
  if (device < 0 || device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " is outside [0, ", devices, ")"));
  }
  GEMMA_CUDA(cudaSetDevice(device));
  ncclUniqueId id;
  if (bootstrap.rank() == 0) GEMMA_NCCL(ncclGetUniqueId(&id));
  std::string id_bytes(reinterpret_cast<const char*>(&id), sizeof(id));
  if (auto s = bootstrap.Broadcast(&id_bytes, 0); !s.ok()) return s;
  if (id_bytes.size() != sizeof(id)) return absl::InternalError("NCCL unique id of the wrong size from rank 0");
  std::memcpy(&id, id_bytes.data(), sizeof(id));

  // Non-blocking init, so a rank that never arrives is noticed within the timeout.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  GEMMA_NCCL(ncclCommInitRankConfig(&comm, bootstrap.world(), id, bootstrap.rank(), &config));
  const auto start = std::chrono::steady_clock::now();
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) {
    ncclCommGetAsyncError(comm, &state);
    if (state == ncclInProgress && std::chrono::steady_clock::now() - start > timeout) {
      ncclCommAbort(comm);
      return absl::UnavailableError(absl::StrCat("rank ", bootstrap.rank(), " of ", bootstrap.world(),
                                                 " could not connect to its peers over NCCL within ", timeout.count(),
                                                 " ms"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (state != ncclSuccess) {
    ncclCommAbort(comm);
    return NcclError(state, "ncclCommInitRankConfig", __FILE__, __LINE__);
  }
  cudaStream_t stream = nullptr;
  if (const cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    ncclCommAbort(comm);
    return CudaError(e, "cudaStreamCreateWithFlags", __FILE__, __LINE__);
  }
  return std::unique_ptr<DeviceCollective>(
      new NcclCollective(bootstrap.rank(), bootstrap.world(), device, comm, stream, timeout));
}

#endif  // GEMMA_HAVE_NCCL

}  // namespace gemma
