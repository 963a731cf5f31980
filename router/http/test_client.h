// A minimal blocking HTTP/1.1 client for tests: one request per connection (Connection: close), chunked replies
// decoded. Test-only; header-only so each test binary takes it without a library.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace gemma::http::testing {

struct HttpReply {
  int status = 0;  // 0: no reply
  std::string head;
  std::string body;  // de-chunked
};

inline int ConnectLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

inline std::string RequestText(const std::string& method, const std::string& path, const std::string& body,
                               const std::vector<std::string>& headers = {}) {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  for (const auto& h : headers) r += h + "\r\n";
  if (method == "POST") r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

// Bytes until the server closes the connection or `limit` passes.
inline std::string ReadUntilClosed(int fd, std::chrono::milliseconds limit) {
  timeval tv{0, 100 * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  const auto end = std::chrono::steady_clock::now() + limit;
  char buf[8192];
  while (std::chrono::steady_clock::now() < end) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

inline HttpReply ParseReply(const std::string& raw) {
  HttpReply r;
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.compare(0, 9, "HTTP/1.1 ") != 0 || head_end == std::string::npos) return r;
  r.status = std::atoi(raw.c_str() + 9);
  r.head = raw.substr(0, head_end);
  std::string rest = raw.substr(head_end + 4);
  if (r.head.find("Transfer-Encoding: chunked") == std::string::npos) {
    r.body = std::move(rest);
    return r;
  }
  size_t at = 0;
  while (at < rest.size()) {
    const size_t line_end = rest.find("\r\n", at);
    if (line_end == std::string::npos) break;
    const size_t size = std::strtoul(rest.c_str() + at, nullptr, 16);
    if (size == 0) break;
    r.body += rest.substr(line_end + 2, size);
    at = line_end + 2 + size + 2;
  }
  return r;
}

inline HttpReply Call(int port, const std::string& method, const std::string& path, const std::string& body = "",
                      const std::vector<std::string>& headers = {},
                      std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return {};
  SendAll(fd, RequestText(method, path, body, headers));
  HttpReply r = ParseReply(ReadUntilClosed(fd, limit));
  ::close(fd);
  return r;
}

// The JSON payloads of a server-sent-event body's "data: " lines, in order ("[DONE]" included).
inline std::vector<std::string> EventData(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end == std::string::npos ? std::string::npos : end - at - 6));
    if (end == std::string::npos) break;
    at = end + 2;
  }
  return out;
}

}  // namespace gemma::http::testing
