#include "tools/http_stream_client.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>

#include "absl/cleanup/cleanup.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

absl::StatusOr<int> ConnectTo(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host));
  }
  absl::Cleanup free_found = [found] { freeaddrinfo(found); };
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) return fd;
    ::close(fd);
  }
  return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port));
}

}  // namespace

absl::Status PostAndStreamEvents(const std::string& host, int port, const std::string& path, const std::string& body,
                                 const std::function<void(std::string_view data)>& on_event) {
  auto fd = ConnectTo(host, port);
  if (!fd.ok()) return fd.status();
  absl::Cleanup close_fd = [&fd] { ::close(*fd); };
  const std::string request = absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: ", host,
                                           "\r\nConnection: close\r\nContent-Type: application/json\r\n"
                                           "Content-Length: ", body.size(), "\r\n\r\n", body);
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(*fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError("the server closed the connection while the request was sent");
    sent += static_cast<size_t>(n);
  }
  // Raw bytes -> (head) -> chunk payloads -> events split at blank lines.
  std::string raw, payload;
  bool have_head = false, chunked = false;
  int status = 0;
  size_t chunk_left = 0;
  bool done = false;
  auto take_events = [&] {
    size_t end;
    while ((end = payload.find("\n\n")) != std::string::npos) {
      std::string_view event(payload.data(), end);
      if (event.substr(0, 6) == "data: ") on_event(event.substr(6));
      payload.erase(0, end + 2);
    }
  };
  char buf[16384];
  while (!done) {
    const ssize_t n = ::recv(*fd, buf, sizeof(buf), 0);
    if (n < 0) return absl::UnavailableError("reading the reply failed");
    if (n == 0) break;
    raw.append(buf, static_cast<size_t>(n));
    if (!have_head) {
      const size_t head_end = raw.find("\r\n\r\n");
      if (head_end == std::string::npos) continue;
      status = raw.compare(0, 9, "HTTP/1.1 ") == 0 ? std::atoi(raw.c_str() + 9) : 0;
      chunked = raw.substr(0, head_end).find("Transfer-Encoding: chunked") != std::string::npos;
      raw.erase(0, head_end + 4);
      have_head = true;
    }
    if (!chunked) {
      payload += raw;
      raw.clear();
    } else {
      while (!raw.empty()) {
        if (chunk_left == 0) {
          const size_t line_end = raw.find("\r\n");
          if (line_end == std::string::npos) break;
          chunk_left = std::strtoul(raw.c_str(), nullptr, 16);
          if (chunk_left == 0) {
            done = true;
            break;
          }
          raw.erase(0, line_end + 2);
          chunk_left += 2;  // the CRLF after the data
        }
        const size_t take = std::min(chunk_left, raw.size());
        payload.append(raw, 0, take);
        raw.erase(0, take);
        chunk_left -= take;
        if (chunk_left == 0) payload.resize(payload.size() - 2);
      }
    }
    if (status == 200) take_events();
  }
  if (status != 200) return absl::UnavailableError(absl::StrCat("HTTP ", status, ": ", payload));
  if (chunked && !done) return absl::UnavailableError("the server closed the connection before the reply ended");
  take_events();
  return absl::OkStatus();
}

}  // namespace gemma
