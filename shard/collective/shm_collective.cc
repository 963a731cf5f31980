#include "shard/collective/shm_collective.h"

#include <fcntl.h>
#include <immintrin.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

constexpr int kMaxRanks = 64;
constexpr uint64_t kMagic = 0x67656d6d61736d31ull;  // "gemmasm1"
constexpr size_t kSlotBytes = 4 << 20;             // per rank and parity; larger messages go in chunks

struct alignas(64) Counter {
  std::atomic<uint64_t> value;
};

struct Header {
  std::atomic<uint64_t> magic;
  std::atomic<int32_t> world;
  pid_t pids[kMaxRanks];
  Counter arrived[kMaxRanks];  // rank r has published its part of op arrived[r] - 1
};

// Whether process `pid` has ended: gone, or a zombie its parent has yet to reap (a rank's launcher is often the
// leader waiting right here, so a killed follower stays a zombie until the wait gives up).
bool Ended(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  char stat[512] = {};
  const size_t n = std::fread(stat, 1, sizeof(stat) - 1, f);
  std::fclose(f);
  const char* end_of_name = std::strrchr(stat, ')');  // the name may hold spaces and parentheses
  return n > 0 && end_of_name != nullptr && end_of_name[1] == ' ' && end_of_name[2] == 'Z';
}

size_t SegmentBytes(int world) { return sizeof(Header) + 2 * static_cast<size_t>(world) * kSlotBytes; }

std::string SegmentName(const std::string& name) {
  std::string tail;
  for (char c : name) tail.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  // The end of a long name is kept: it is where a rendezvous directory's random suffix is.
  if (tail.size() > 190) tail = tail.substr(tail.size() - 190);
  return "/gemma-tp-" + tail;
}

class ShmCollective : public HostCollective {
 public:
  ShmCollective(int rank, int world, void* base, size_t bytes, std::chrono::milliseconds timeout)
      : rank_(rank), world_(world), base_(base), bytes_(bytes), timeout_(timeout) {}
  ~ShmCollective() override { ::munmap(base_, bytes_); }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (auto s = CheckCollectiveBuffers("all-reduce", data, data, count); !s.ok()) return s;
    const size_t chunk = kSlotBytes / sizeof(float);
    for (size_t begin = 0; begin < count; begin += chunk) {
      const size_t n = std::min(chunk, count - begin);
      float* mine = Slot<float>(rank_);
      std::memcpy(mine, data + begin, n * sizeof(float));
      RETURN_IF_ERROR(Publish("all-reduce"));
      // Every rank adds the slots in rank order: identical sums everywhere.
      std::memcpy(data + begin, Slot<float>(0), n * sizeof(float));
      for (int r = 1; r < world_; ++r) {
        const float* other = Slot<float>(r);
        for (size_t i = 0; i < n; ++i) data[begin + i] += other[i];
      }
      ++op_;
    }
    return absl::OkStatus();
  }

  absl::Status AllGather(const float* in, size_t count, float* out) override {
    if (auto s = CheckCollectiveBuffers("all-gather", in, out, count); !s.ok()) return s;
    const size_t chunk = kSlotBytes / sizeof(float);
    for (size_t begin = 0; begin < count || (count == 0 && begin == 0); begin += chunk) {
      const size_t n = std::min(chunk, count - begin);
      std::memcpy(Slot<float>(rank_), in + begin, n * sizeof(float));
      RETURN_IF_ERROR(Publish("all-gather"));
      for (int r = 0; r < world_; ++r) std::memcpy(out + r * count + begin, Slot<float>(r), n * sizeof(float));
      ++op_;
      if (count == 0) break;
    }
    return absl::OkStatus();
  }

  absl::Status Broadcast(std::string* bytes, int root) override {
    if (auto s = CheckBroadcastArgs(*this, bytes, root); !s.ok()) return s;
    // First op: the size; then the bytes in slot-sized chunks.
    uint64_t size = bytes->size();
    if (rank_ == root) std::memcpy(Slot<char>(rank_), &size, sizeof(size));
    RETURN_IF_ERROR(Publish("broadcast"));
    std::memcpy(&size, Slot<char>(root), sizeof(size));
    ++op_;
    if (rank_ != root) bytes->resize(size);
    for (uint64_t begin = 0; begin < size; begin += kSlotBytes) {
      const size_t n = std::min<uint64_t>(kSlotBytes, size - begin);
      if (rank_ == root) std::memcpy(Slot<char>(rank_), bytes->data() + begin, n);
      RETURN_IF_ERROR(Publish("broadcast"));
      if (rank_ != root) std::memcpy(bytes->data() + begin, Slot<char>(root), n);
      ++op_;
    }
    return absl::OkStatus();
  }

  absl::Status Barrier() override {
    auto s = Publish("barrier");
    ++op_;
    return s;
  }

 private:
  Header* header() const { return static_cast<Header*>(base_); }

  // This op's slot of rank r; ops alternate between two sets, so a rank that is
  // one op ahead never overwrites data a slower rank is still reading.
  template <typename T>
  T* Slot(int r) const {
    char* slots = static_cast<char*>(base_) + sizeof(Header);
    return reinterpret_cast<T*>(slots + ((op_ & 1) * world_ + r) * kSlotBytes);
  }

  // Marks this rank's part of op_ written, then waits for every rank's.
  absl::Status Publish(const char* what) {
    header()->arrived[rank_].value.store(op_ + 1, std::memory_order_release);
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < world_; ++r) {
      uint64_t spins = 0;
      while (header()->arrived[r].value.load(std::memory_order_acquire) < op_ + 1) {
        if (++spins < 2000) {
          _mm_pause();
          continue;
        }
        // Yield so that more ranks than cores still progress; check for dead or stuck peers now and then.
        if (spins < 200000) {
          ::sched_yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        if ((spins & 255) == 0) {
          if (Ended(header()->pids[r])) {
            return absl::UnavailableError(absl::StrCat(what, ": a peer rank failed: rank ", r, " (pid ",
                                                       header()->pids[r], ") has exited"));
          }
          if (std::chrono::steady_clock::now() - start > timeout_) {
            return absl::DeadlineExceededError(absl::StrCat(what, ": a peer rank did not answer in time: rank ", r,
                                                            " stalled for more than ", timeout_.count(), " ms"));
          }
        }
      }
    }
    return absl::OkStatus();
  }

  int rank_, world_;
  void* base_;
  size_t bytes_;
  std::chrono::milliseconds timeout_;
  uint64_t op_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HostCollective>> CreateShmCollective(const ShmOptions& o) {
  if (o.world < 1 || o.world > kMaxRanks || o.rank < 0 || o.rank >= o.world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", o.rank, " of ", o.world, " is invalid; allowed world 1..",
                                                   kMaxRanks));
  }
  const std::string name = SegmentName(o.name);
  const size_t bytes = SegmentBytes(o.world);
  const auto deadline = std::chrono::steady_clock::now() + o.timeout;
  int fd = -1;
  if (o.rank == 0) {
    ::shm_unlink(name.c_str());
    fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      if (fd >= 0) {
        ::close(fd);
        ::shm_unlink(name.c_str());
      }
      return absl::UnavailableError(absl::StrCat("cannot create shared memory ", name, " of ", bytes, " bytes: ",
                                                 std::strerror(errno)));
    }
  } else {
    struct stat st {};
    while ((fd = ::shm_open(name.c_str(), O_RDWR, 0600)) < 0 || ::fstat(fd, &st) != 0 ||
           static_cast<size_t>(st.st_size) < bytes) {
      if (fd >= 0) ::close(fd);
      fd = -1;
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::UnavailableError(absl::StrCat("rank ", o.rank, " of ", o.world,
                                                   " could not connect to its peers: rank 0 did not create ", name,
                                                   " within ", o.timeout.count(), " ms"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) {
    const int error = errno;
    if (o.rank == 0) ::shm_unlink(name.c_str());
    return absl::UnavailableError(absl::StrCat("cannot map ", name, ": ", std::strerror(error)));
  }
  auto* h = static_cast<Header*>(base);
  h->pids[o.rank] = ::getpid();
  if (o.rank == 0) {
    h->world.store(o.world);
    h->magic.store(kMagic, std::memory_order_release);
  } else {
    while (h->magic.load(std::memory_order_acquire) != kMagic) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::munmap(base, bytes);
        return absl::UnavailableError("shared-memory group was never initialized by rank 0");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (h->world.load() != o.world) {
      ::munmap(base, bytes);
      return absl::InvalidArgumentError(absl::StrCat("world size ", o.world, " differs from rank 0's ", h->world.load()));
    }
  }
  auto c = std::make_unique<ShmCollective>(o.rank, o.world, base, bytes, o.timeout);
  // Everyone present (pids written) before any real collective; then the name can go.
  if (auto s = c->Barrier(); !s.ok()) {
    // The group is over: its name must not outlive it in /dev/shm. Rank 0's to remove: a late follower could
    // otherwise remove the segment of a group rank 0 has started again.
    if (o.rank == 0) ::shm_unlink(name.c_str());
    return absl::UnavailableError(absl::StrCat("rank ", o.rank, " of ", o.world,
                                               " could not connect to its peers: ", s.message()));
  }
  if (o.rank == 0) ::shm_unlink(name.c_str());
  return std::unique_ptr<HostCollective>(std::move(c));
}

}  // namespace gemma
