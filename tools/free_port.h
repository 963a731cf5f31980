// A TCP port that was free on every interface a moment ago. Header-only, so the tests' process helpers and
// `gemma serve` share it without a library between them.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <random>
#include <set>

namespace gemma {

namespace free_port_internal {

// Binds 0.0.0.0:port (0: the kernel picks) and closes it; the port bound, or 0 when it was taken.
inline int TryBind(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_ANY);  // servers bind every interface: free on all of them
  socklen_t len = sizeof(addr);
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  return bound ? ntohs(addr.sin_port) : 0;
}

}  // namespace free_port_internal

// Below the kernel's ephemeral range: a port that bind(0) hands back comes from that range, and until the caller
// binds it again any outgoing connection on the host may take it as its local port (tests open many).
inline int FreeLoopbackPort() {
  constexpr int kLowest = 10000;
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  if (ephemeral_low > kLowest + 1000) {
    // Not one this process handed out already: the caller may not have bound it yet. (A child forked after a call
    // would repeat its parent's next picks; the callers exec their children at once.)
    static std::mutex mu;
    static std::set<int> handed_out;
    static std::minstd_rand rng(std::random_device{}());
    std::lock_guard<std::mutex> lock(mu);
    for (int attempt = 0; attempt < 64; ++attempt) {
      const int port = kLowest + static_cast<int>(rng() % (ephemeral_low - kLowest));
      if (!handed_out.count(port) && free_port_internal::TryBind(port) > 0) {
        handed_out.insert(port);
        return port;
      }
    }
  }
  return free_port_internal::TryBind(0);
}

}  // namespace gemma
