// A small HTTP/1.1 server on libevent's evhttp: one event-loop thread serves every connection, so thousands of
// idle streaming clients cost a socket and a buffer each, not a thread. Handlers run on that loop; work done
// elsewhere (a request's tokens) comes back to it through Post.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"

struct evhttp_request;

namespace gemma::http {

struct ServerOptions {
  std::string bind_host = "0.0.0.0";
  int port = 0;  // 0: any free port
  // PEM files; both empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Larger bodies get 413 from the server, the handler never sees them: up to 1 MiB past this (at most this again,
  // plus 64 KiB) the reply says what was sent and what is allowed, in too_large_body's words where it is set (a
  // JSON error in the API's shape); past that libevent stops reading and answers its own page.
  size_t max_body_bytes = 4 << 20;
  // A JSON body for the 413 of a request to `path` (the caller may count the refusal); runs on the loop: quick.
  std::function<std::string(std::string_view path, size_t body_bytes, size_t max_body_bytes)> too_large_body;
  size_t max_header_bytes = 16 << 10;  // all headers together; bounds their count too
  // A client that sends nothing (request not complete) or reads nothing of a reply for this long is dropped.
  std::chrono::seconds io_timeout{30};
  // A streaming client that lets this much of its reply pile up unread is dropped (a reader too slow to keep).
  size_t max_pending_reply_bytes = 8 << 20;
};

class Server;

// One request and its reply. Lives on the loop thread: every method, the destructor included, must run there (from
// a handler, or from a function given to Server::Post); hold it from other threads only to post it back.
class Exchange {
 public:
  Exchange(Server* server, evhttp_request* request);
  ~Exchange();  // an exchange never answered is answered 500 (a handler that lost it is a bug, not a hang)
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  std::string_view method() const { return method_; }
  // The path without the query string.
  std::string_view path() const { return path_; }
  std::optional<std::string_view> header(const char* name) const;
  const std::string& body() const { return body_; }
  Server& server() const { return *server_; }

  // A header of the reply to come (before Reply or StartStream; ignored after).
  void AddHeader(const std::string& name, const std::string& value);
  // The whole reply at once.
  void Reply(int status, std::string_view content_type, std::string_view body);
  // A streamed reply (chunked): the head now, then Send for each part, then End.
  void StartStream(int status, std::string_view content_type);
  void Send(std::string_view data);
  void End();

  // The client went away before the reply ended: nothing it is sent arrives. Seen when a write fails, or on the
  // server's periodic check of connections still waiting for a reply.
  bool closed() const { return closed_; }
  // Called once, on the loop, when the client goes away before the reply ended.
  void OnClose(std::function<void()> callback) { on_close_ = std::move(callback); }
  bool answered() const { return state_ == State::kDone; }

 private:
  friend class Server;
  enum class State { kNew, kStreaming, kDone };
  void MarkClosed();
  // The socket the client is on; -1 once it is gone.
  int fd() const;
  void Detach();
  // Ends an exchange whose client is gone: frees the request and closes its connection.
  void Abandon();

  Server* server_;
  evhttp_request* request_;
  std::string method_;
  std::string path_;
  std::string body_;
  State state_ = State::kNew;
  bool closed_ = false;
  std::function<void()> on_close_;
};

// Thread-safe: Post may be called from any thread; everything else runs on the loop.
class Server {
 public:
  using Handler = std::function<void(std::shared_ptr<Exchange>)>;
  // Listens and starts the loop thread. InvalidArgument for unreadable or mismatched TLS files; Unavailable when
  // the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options, Handler handler);
  // Stops the loop: what was posted runs first, exchanges still open are answered 503 (streams end), and the loop
  // gives their replies up to half a second to leave.
  ~Server();

  int port() const { return port_; }
  // Runs `fn` on the loop thread, soon. Thread-safe.
  void Post(std::function<void()> fn);
  // Post, as a function that may outlive the server (it then drops what it is given): for producers, such as a
  // request's token callback, that may still fire while the server stops.
  using Poster = std::function<void(std::function<void()>)>;
  Poster poster() const;
  // Exchanges not yet answered (streams included); read on the loop.
  size_t open_exchanges() const { return open_.size(); }
  const ServerOptions& options() const { return options_; }

  struct Impl;

 private:
  friend class Exchange;
  explicit Server(ServerOptions options, Handler handler);
  void Forget(Exchange* exchange);

  ServerOptions options_;
  Handler handler_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  absl::flat_hash_set<Exchange*> open_;  // loop thread only
  bool stopping_ = false;                 // loop thread only: requests are answered 503 without the handler
};

// `text` with its %XX escapes decoded ("google%2Fgemma-2b" -> "google/gemma-2b"); paths reach handlers as sent.
std::string PercentDecoded(std::string_view text);

}  // namespace gemma::http
