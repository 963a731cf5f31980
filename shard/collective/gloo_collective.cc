#include "shard/collective/gloo_collective.h"

#include <csignal>
#include <exception>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/file_store.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/transport/tcp/device.h"

namespace gemma {
namespace {

// Gloo reports failures by throwing; they end at this boundary as Status.
template <typename F>
absl::Status Guard(const char* what, F&& f) {
  try {
    f();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    if (msg.find("imed out") != std::string::npos || msg.find("Timeout") != std::string::npos) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": a peer rank did not answer in time: ", msg));
    }
    return absl::UnavailableError(absl::StrCat(what, ": a peer rank failed: ", msg));
  }
}

class GlooCollective : public HostCollective {
 public:
  GlooCollective(std::shared_ptr<gloo::rendezvous::Store> store, std::shared_ptr<gloo::Context> context,
                 std::chrono::milliseconds timeout)
      : store_(std::move(store)), context_(std::move(context)), timeout_(timeout) {}

  int rank() const override { return context_->rank; }
  int world() const override { return context_->size; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (auto s = CheckCollectiveBuffers("all-reduce", data, data, count); !s.ok()) return s;
    if (count == 0) return absl::OkStatus();
    return Guard("all-reduce", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(data, count);
      opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      opts.setTag(tag_++);
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
  }

  absl::Status AllGather(const float* in, size_t count, float* out) override {
    if (auto s = CheckCollectiveBuffers("all-gather", in, out, count); !s.ok()) return s;
    if (count == 0) return absl::OkStatus();  // Gloo divides by the element count: 0 raised SIGFPE
    std::copy(in, in + count, out + static_cast<size_t>(rank()) * count);
    return Guard("all-gather", [&] {
      gloo::AllgatherOptions opts(context_);
      opts.setOutput(out, count * world());
      opts.setTag(tag_++);
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  absl::Status Broadcast(std::string* bytes, int root) override {
    if (auto s = CheckBroadcastArgs(*this, bytes, root); !s.ok()) return s;
    uint64_t size = bytes->size();
    auto st = Guard("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(&size, 1);
      opts.setRoot(root);
      opts.setTag(tag_++);
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
    if (!st.ok() || size == 0) {
      if (st.ok()) bytes->clear();
      return st;
    }
    bytes->resize(size);
    return Guard("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(reinterpret_cast<uint8_t*>(bytes->data()), size);
      opts.setRoot(root);
      opts.setTag(tag_++);
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  absl::Status Barrier() override {
    return Guard("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(tag_++);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

 private:
  std::shared_ptr<gloo::rendezvous::Store> store_;
  std::shared_ptr<gloo::Context> context_;
  std::chrono::milliseconds timeout_;
  uint32_t tag_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HostCollective>> CreateGlooCollective(std::shared_ptr<gloo::rendezvous::Store> store,
                                                                 const GlooOptions& options) {
  // Gloo writes to its peers' sockets without MSG_NOSIGNAL: a peer that has left would kill this process with
  // SIGPIPE instead of failing the collective with an error, as a dead peer must.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  if (options.world < 1 || options.rank < 0 || options.rank >= options.world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " is outside [0, ", options.world, ")"));
  }
  std::shared_ptr<gloo::rendezvous::Context> context;
  auto st = Guard("rendezvous", [&] {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.bind_host;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world);
    context->setTimeout(options.timeout);
    context->connectFullMesh(*store, device);
  });
  if (!st.ok()) {
    return absl::UnavailableError(absl::StrCat("rank ", options.rank, " of ", options.world,
                                               " could not connect to its peers within ", options.timeout.count(),
                                               " ms: ", st.message()));
  }
  return std::unique_ptr<HostCollective>(new GlooCollective(std::move(store), std::move(context), options.timeout));
}

std::shared_ptr<gloo::rendezvous::Store> MakeFileStore(const std::string& dir) {
  return std::make_shared<gloo::rendezvous::FileStore>(dir);
}

}  // namespace gemma
