#include "monitoring/http_get.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

class Socket {
 public:
  Socket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Waits for `events` on `fd` until `end`; false on timeout.
bool Wait(int fd, short events, std::chrono::steady_clock::time_point end) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // the next call on the socket reports the error
  }
}

}  // namespace

absl::StatusOr<std::string> LoopbackHttpGet(int port, const std::string& path, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  const std::string where = absl::StrCat("127.0.0.1:", port, path);
  Socket s;
  if (s.fd() < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat(where, ": ", std::strerror(errno)));
  }
  if (!Wait(s.fd(), POLLOUT, end)) return absl::DeadlineExceededError(absl::StrCat(where, ": no connection in time"));
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return absl::UnavailableError(absl::StrCat(where, ": ", std::strerror(err)));

  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    if (!Wait(s.fd(), POLLOUT, end)) return absl::DeadlineExceededError(absl::StrCat(where, ": request not sent in time"));
    const ssize_t n = ::send(s.fd(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(where, ": ", std::strerror(errno)));
    }
    if (n > 0) sent += n;
  }
  std::string reply;
  char buf[16384];
  for (;;) {
    if (!Wait(s.fd(), POLLIN, end)) return absl::DeadlineExceededError(absl::StrCat(where, ": no full reply in time"));
    const ssize_t n = ::recv(s.fd(), buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat(where, ": ", std::strerror(errno)));
    }
    reply.append(buf, n);
  }
  const size_t head_end = reply.find("\r\n\r\n");
  const size_t line_end = reply.find("\r\n");
  if (head_end == std::string::npos) return absl::InternalError(absl::StrCat(where, ": not an HTTP reply"));
  const std::string status = reply.substr(0, line_end);
  if (status.find(" 200") == std::string::npos) return absl::InternalError(absl::StrCat(where, ": ", status));
  return reply.substr(head_end + 4);
}

}  // namespace gemma
