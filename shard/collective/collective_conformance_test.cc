// One contract, every collective: the single-rank identity, shared memory and Gloo (ranks as threads of this
// process), and NCCL where GPUs are visible (else those cases skip). Every kind must pass every case:
//   - all-reduce sums every rank's buffer, bit-identically on every rank, across the kinds' chunk sizes;
//   - all-gather puts rank r's buffer at r * count, for empty, small and chunked buffers;
//   - broadcast delivers the root's bytes (empty, binary, larger than a chunk) from every root;
//   - bad arguments (a null buffer, a root outside the group, an output of the wrong size) are InvalidArgument,
//     nothing is sent, and the group still works afterwards;
//   - a peer that leaves, or never arrives, fails the others within the group's timeout (no hang).
// Label unit: all of it runs in one process in seconds.
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/collective/collective.h"
#include "shard/collective/gloo_collective.h"
#include "shard/collective/nccl_collective.h"
#include "shard/collective/shm_collective.h"

#ifdef GEMMA_HAVE_NCCL
#include <cuda_runtime.h>
#endif

namespace gemma {
namespace {

using std::chrono::milliseconds;

// One rank's view of a group, over host vectors whatever memory the collective uses.
class Member {
 public:
  virtual ~Member() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual absl::Status AllReduceSum(std::vector<float>* data) = 0;
  virtual absl::Status AllGather(const std::vector<float>& in, std::vector<float>* out) = 0;
  virtual absl::Status Broadcast(std::string* bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;
  // Calls with bad arguments that this kind's interface lets a caller write, each named; every one must be
  // InvalidArgument and send nothing.
  virtual std::vector<std::pair<std::string, absl::Status>> BadCalls() = 0;
};

class HostMember : public Member {
 public:
  explicit HostMember(std::unique_ptr<HostCollective> c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int world() const override { return c_->world(); }
  absl::Status AllReduceSum(std::vector<float>* data) override { return c_->AllReduceSum(data->data(), data->size()); }
  absl::Status AllGather(const std::vector<float>& in, std::vector<float>* out) override {
    out->assign(in.size() * world(), -1.0f);
    return c_->AllGather(in.data(), in.size(), out->data());
  }
  absl::Status Broadcast(std::string* bytes, int root) override { return c_->Broadcast(bytes, root); }
  absl::Status Barrier() override { return c_->Barrier(); }
  std::vector<std::pair<std::string, absl::Status>> BadCalls() override {
    std::vector<float> in(4, 1.0f);
    std::string bytes = "x";
    return {{"all-reduce of a null buffer", c_->AllReduceSum(nullptr, 4)},
            {"all-gather from a null buffer", c_->AllGather(nullptr, 4, in.data())},
            {"all-gather into a null buffer", c_->AllGather(in.data(), 4, nullptr)},
            {"broadcast from root -1", c_->Broadcast(&bytes, -1)},
            {"broadcast from root world", c_->Broadcast(&bytes, world())},
            {"broadcast of no string", c_->Broadcast(nullptr, 0)}};
  }

 private:
  std::unique_ptr<HostCollective> c_;
};

#ifdef GEMMA_HAVE_NCCL
int CudaDevices() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// NCCL on device `rank`, bootstrapped over shared memory; buffers staged through device memory.
class NcclMember : public Member {
 public:
  NcclMember(std::unique_ptr<HostCollective> bootstrap, std::unique_ptr<DeviceCollective> c, int device)
      : bootstrap_(std::move(bootstrap)), c_(std::move(c)), device_(device) {}
  ~NcclMember() override {
    cudaSetDevice(device_);
    for (float* p : {a_, b_}) cudaFree(p);
  }
  int rank() const override { return c_->rank(); }
  int world() const override { return c_->world(); }
  absl::Status AllReduceSum(std::vector<float>* data) override {
    if (auto s = Reserve(data->size(), 0); !s.ok()) return s;
    cudaMemcpy(a_, data->data(), data->size() * sizeof(float), cudaMemcpyHostToDevice);
    if (auto s = c_->AllReduceSum(DeviceFloats(a_, data->size())); !s.ok()) return s;
    cudaMemcpy(data->data(), a_, data->size() * sizeof(float), cudaMemcpyDeviceToHost);
    return absl::OkStatus();
  }
  absl::Status AllGather(const std::vector<float>& in, std::vector<float>* out) override {
    out->assign(in.size() * world(), -1.0f);
    if (auto s = Reserve(in.size(), out->size()); !s.ok()) return s;
    cudaMemcpy(a_, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
    if (auto s = c_->AllGather(ConstDeviceFloats(a_, in.size()), DeviceFloats(b_, out->size())); !s.ok()) return s;
    cudaMemcpy(out->data(), b_, out->size() * sizeof(float), cudaMemcpyDeviceToHost);
    return absl::OkStatus();
  }
  absl::Status Broadcast(std::string* bytes, int root) override { return c_->Broadcast(bytes, root); }
  absl::Status Barrier() override { return c_->Barrier(); }
  std::vector<std::pair<std::string, absl::Status>> BadCalls() override {
    std::vector<std::pair<std::string, absl::Status>> out;
    if (auto s = Reserve(4, 4 * world() + 1); !s.ok()) return {{"device memory", s}};
    std::string bytes = "x";
    out.push_back({"all-gather into one float too many",
                   c_->AllGather(ConstDeviceFloats(a_, 4), DeviceFloats(b_, 4 * world() + 1))});
    out.push_back({"all-gather into too few floats", c_->AllGather(ConstDeviceFloats(a_, 4), DeviceFloats(b_, 3))});
    out.push_back({"broadcast from root -1", c_->Broadcast(&bytes, -1)});
    out.push_back({"broadcast from root world", c_->Broadcast(&bytes, world())});
    return out;
  }

 private:
  absl::Status Reserve(size_t a, size_t b) {
    cudaSetDevice(device_);
    for (auto [p, n, have] : {std::tuple{&a_, a, &a_count_}, std::tuple{&b_, b, &b_count_}}) {
      if (n <= *have) continue;
      cudaFree(*p);
      if (cudaMalloc(p, n * sizeof(float)) != cudaSuccess) return absl::ResourceExhaustedError("cudaMalloc");
      *have = n;
    }
    return absl::OkStatus();
  }
  std::unique_ptr<HostCollective> bootstrap_;
  std::unique_ptr<DeviceCollective> c_;
  int device_;
  float *a_ = nullptr, *b_ = nullptr;
  size_t a_count_ = 0, b_count_ = 0;
};
#endif

// A kind of collective and a group size; `join` makes rank `rank` of a group named `group` (each rank of one
// group passes the same name) or says why not.
struct Kind {
  std::string name;
  int world;
  std::function<absl::StatusOr<std::unique_ptr<Member>>(int rank, int world, const std::string& group, milliseconds)>
      join;
  std::function<std::string()> skip = [] { return std::string(); };  // non-empty: why this kind cannot run here
};
void PrintTo(const Kind& k, std::ostream* os) { *os << k.name << "_x" << k.world; }

// Each test runs in a process of its own, and pids come back: a random part keeps a group's rendezvous files from
// meeting those an earlier process left behind.
std::string Unique(const std::string& what) {
  static std::atomic<int> n{0};
  static const uint64_t salt = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  return absl::StrCat(what, "_", ::getpid(), "_", salt, "_", n++);
}

absl::StatusOr<std::unique_ptr<Member>> Host(absl::StatusOr<std::unique_ptr<HostCollective>> c) {
  if (!c.ok()) return c.status();
  return std::unique_ptr<Member>(new HostMember(std::move(*c)));
}

std::vector<Kind> Kinds() {
  std::vector<Kind> kinds;
  kinds.push_back({"single", 1, [](int, int, const std::string&, milliseconds) {
                     return Host(MakeSingleRankCollective());
                   }});
  for (int world : {2, 3}) {
    kinds.push_back({"shm", world, [](int rank, int world, const std::string& group, milliseconds timeout) {
                       return Host(CreateShmCollective({rank, world, group, timeout}));
                     }});
    kinds.push_back({"gloo", world, [](int rank, int world, const std::string& group, milliseconds timeout) {
                       const std::string dir = ::testing::TempDir() + "/" + group;
                       std::filesystem::create_directories(dir);
                       GlooOptions o;
                       o.rank = rank;
                       o.world = world;
                       o.timeout = timeout;
                       return Host(CreateGlooCollective(MakeFileStore(dir), o));
                     }});
  }
  for (int world : {1, 2}) {
    Kind nccl{"nccl", world,
              [](int rank, int world, const std::string& group,
                 milliseconds timeout) -> absl::StatusOr<std::unique_ptr<Member>> {
#ifdef GEMMA_HAVE_NCCL
                auto bootstrap = CreateShmCollective({rank, world, group, timeout});
                if (!bootstrap.ok()) return bootstrap.status();
                if (cudaSetDevice(rank) != cudaSuccess) return absl::InternalError("cudaSetDevice");
                auto c = CreateNcclCollective(**bootstrap, rank, timeout);
                if (!c.ok()) return c.status();
                return std::unique_ptr<Member>(new NcclMember(std::move(*bootstrap), std::move(*c), rank));
#else
                return absl::UnimplementedError("built without NCCL");
#endif
              }};
    nccl.skip = [world]() -> std::string {
#ifdef GEMMA_HAVE_NCCL
      const int devices = CudaDevices();
      if (devices >= world) return "";
      return absl::StrCat("NCCL needs one GPU per rank: ", world, " ranks, ", devices, " devices visible");
#else
      return "built without NCCL";
#endif
    };
    kinds.push_back(nccl);
  }
  return kinds;
}

class CollectiveConformanceTest : public ::testing::TestWithParam<Kind> {
 protected:
  static constexpr milliseconds kTimeout{20000};

  void SetUp() override {
    if (const std::string why = GetParam().skip(); !why.empty()) GTEST_SKIP() << why;
  }

  // Runs `body` on every rank of a fresh group, one thread per rank.
  void OnEveryRank(const std::function<void(Member&)>& body, milliseconds timeout = kTimeout) {
    const Kind& k = GetParam();
    const std::string group = Unique("conf_" + k.name);
    std::vector<std::thread> threads;
    for (int r = 0; r < k.world; ++r) {
      threads.emplace_back([&, r] {
        auto m = k.join(r, k.world, group, timeout);
        ASSERT_TRUE(m.ok()) << "rank " << r << ": " << m.status();
        EXPECT_EQ((*m)->rank(), r);
        EXPECT_EQ((*m)->world(), k.world);
        body(**m);
      });
    }
    for (auto& t : threads) t.join();
  }
};

// Larger than a shared-memory slot (4 MiB), so the chunked paths run too.
constexpr size_t kChunked = (size_t{4} << 20) / sizeof(float) + 17;

float Value(int rank, size_t i) { return 0.1f * static_cast<float>(rank + 1) + 0.001f * static_cast<float>(i % 977); }

TEST_P(CollectiveConformanceTest, AllReduceSumsEveryRankIdenticallyOnEach) {
  const int world = GetParam().world;
  std::vector<std::vector<float>> results(world);
  OnEveryRank([&](Member& m) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{1000}, kChunked}) {
      std::vector<float> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = Value(m.rank(), i);
      ASSERT_TRUE(m.AllReduceSum(&data).ok()) << count;
      for (size_t i = 0; i < count; i += 997) {
        double want = 0;
        for (int r = 0; r < world; ++r) want += Value(r, i);
        ASSERT_NEAR(data[i], want, 1e-5 * world) << "rank " << m.rank() << " element " << i << " of " << count;
      }
      if (count == kChunked) results[m.rank()] = std::move(data);
    }
  });
  for (int r = 1; r < world; ++r) EXPECT_TRUE(results[r] == results[0]) << "rank " << r << " differs from rank 0";
}

TEST_P(CollectiveConformanceTest, AllGatherPlacesRankRAtROffset) {
  OnEveryRank([&](Member& m) {
    for (size_t count : {size_t{0}, size_t{3}, kChunked}) {
      std::vector<float> in(count), out;
      for (size_t i = 0; i < count; ++i) in[i] = Value(m.rank(), i);
      ASSERT_TRUE(m.AllGather(in, &out).ok()) << count;
      ASSERT_EQ(out.size(), count * m.world());
      for (int r = 0; r < m.world(); ++r) {
        for (size_t i = 0; i < count; i += (count > 100 ? 101 : 1)) {
          ASSERT_EQ(out[r * count + i], Value(r, i)) << "rank " << m.rank() << " slot " << r << " element " << i;
        }
      }
    }
  });
}

TEST_P(CollectiveConformanceTest, BroadcastDeliversTheRootsBytesFromEveryRoot) {
  std::string big(size_t{9} << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  const std::vector<std::string> messages = {"", std::string("step\0bytes\x01\xff", 12), big};
  OnEveryRank([&](Member& m) {
    for (int root = 0; root < m.world(); ++root) {
      for (const std::string& msg : messages) {
        std::string bytes = m.rank() == root ? msg : std::string("stale contents");
        ASSERT_TRUE(m.Broadcast(&bytes, root).ok()) << "root " << root;
        ASSERT_TRUE(bytes == msg) << "rank " << m.rank() << " root " << root << " got " << bytes.size() << " bytes";
      }
    }
    EXPECT_TRUE(m.Barrier().ok());
  });
}

TEST_P(CollectiveConformanceTest, BadArgumentsAreRejectedAndTheGroupStillWorks) {
  OnEveryRank([&](Member& m) {
    for (const auto& [what, status] : m.BadCalls()) {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << what << ": " << status;
    }
    // Nothing was sent: the next collective pairs up with the peers' next one.
    std::vector<float> data = {1.0f, 2.0f};
    ASSERT_TRUE(m.AllReduceSum(&data).ok());
    EXPECT_EQ(data, (std::vector<float>{1.0f * m.world(), 2.0f * m.world()}));
  });
}

bool Failed(const absl::Status& s) { return absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s); }

// A rank that leaves after joining: the others' next collective fails within the timeout.
TEST_P(CollectiveConformanceTest, APeerThatLeavesFailsTheOthersWithinTheTimeout) {
  if (GetParam().world == 1) GTEST_SKIP() << "no peer to lose";
  const milliseconds timeout(1500);
  OnEveryRank(
      [&](Member& m) {
        ASSERT_TRUE(m.Barrier().ok());
        if (m.rank() == m.world() - 1) return;  // leaves: its member is destroyed when this returns
        std::vector<float> data(64, 1.0f);
        const auto start = std::chrono::steady_clock::now();
        const absl::Status s = m.AllReduceSum(&data);
        const auto took = std::chrono::steady_clock::now() - start;
        EXPECT_TRUE(Failed(s)) << "rank " << m.rank() << ": " << s;
        EXPECT_LT(took, timeout + std::chrono::seconds(5)) << "rank " << m.rank();
      },
      timeout);
}

// A rank that never arrives: joining fails within the timeout.
TEST_P(CollectiveConformanceTest, APeerThatNeverArrivesFailsTheJoinWithinTheTimeout) {
  const Kind& k = GetParam();
  if (k.world == 1) GTEST_SKIP() << "no peer to miss";
  const milliseconds timeout(1500);
  const std::string group = Unique("conf_missing_" + k.name);
  std::vector<std::thread> threads;
  for (int r = 0; r + 1 < k.world; ++r) {  // the last rank never comes
    threads.emplace_back([&, r] {
      const auto start = std::chrono::steady_clock::now();
      absl::Status s;
      if (auto m = k.join(r, k.world, group, timeout); !m.ok()) {
        s = m.status();
      } else {
        std::vector<float> data(8, 1.0f);  // a kind that joins lazily must fail its first collective instead
        s = (*m)->AllReduceSum(&data);
      }
      EXPECT_TRUE(Failed(s)) << "rank " << r << ": " << s;
      EXPECT_LT(std::chrono::steady_clock::now() - start, timeout + std::chrono::seconds(5)) << "rank " << r;
    });
  }
  for (auto& t : threads) t.join();
}

INSTANTIATE_TEST_SUITE_P(Collectives, CollectiveConformanceTest, ::testing::ValuesIn(Kinds()),
                         [](const auto& info) { return info.param.name + "_x" + std::to_string(info.param.world); });

}  // namespace
}  // namespace gemma
