#include "router/http/http_server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace gemma::http {
namespace {

// How often connections still waiting for their reply are checked for a client that left: a non-streaming
// request (or a stream before its first token) writes nothing that would notice.
constexpr timeval kCloseCheckInterval{0, 200 * 1000};

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// Functions handed to the loop from other threads. Shared so that a producer that outlives the server (a
// request's last notification racing shutdown) posts into a closed mailbox rather than a freed one.
class Mailbox {
 public:
  void Attach(event* wake) {
    absl::MutexLock lock(&mu_);
    wake_ = wake;
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    wake_ = nullptr;
    pending_.clear();
  }
  void Post(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    if (wake_ == nullptr) return;
    pending_.push_back(std::move(fn));
    if (pending_.size() == 1) event_active(wake_, EV_READ, 0);
  }
  std::vector<std::function<void()>> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(pending_, {});
  }

 private:
  absl::Mutex mu_;
  event* wake_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<std::function<void()>> pending_ ABSL_GUARDED_BY(mu_);
};

// The request target's path. An origin-form target ("/v1/x?q=1", what clients send) is cut at '?' or '#' here:
// libevent's URI parser takes "//v1/x" for an authority ("v1") and a path ("/x"), which would answer for a path
// the client never asked for.
std::string RequestPath(evhttp_request* request) {
  const char* target = evhttp_request_get_uri(request);
  if (target != nullptr && target[0] == '/') {
    const std::string_view t(target);
    return std::string(t.substr(0, t.find_first_of("?#")));
  }
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(request);
  const char* path = uri != nullptr ? evhttp_uri_get_path(uri) : nullptr;
  return path != nullptr && path[0] != '\0' ? path : "/";
}

}  // namespace

struct Server::Impl {
  event_base* base = nullptr;
  evhttp* http = nullptr;
  event* wake = nullptr;
  event* close_check = nullptr;
  evhttp_bound_socket* bound = nullptr;
  SSL_CTX* ssl = nullptr;
  std::shared_ptr<Mailbox> mailbox = std::make_shared<Mailbox>();
  std::thread loop;

  ~Impl() {
    if (close_check) event_free(close_check);
    if (wake) event_free(wake);
    if (http) evhttp_free(http);
    if (base) event_base_free(base);
    if (ssl) SSL_CTX_free(ssl);
  }
};

Exchange::Exchange(Server* server, evhttp_request* request) : server_(server), request_(request) {
  switch (evhttp_request_get_command(request)) {
    case EVHTTP_REQ_GET: method_ = "GET"; break;
    case EVHTTP_REQ_POST: method_ = "POST"; break;
    case EVHTTP_REQ_HEAD: method_ = "HEAD"; break;
    case EVHTTP_REQ_OPTIONS: method_ = "OPTIONS"; break;
    case EVHTTP_REQ_PUT: method_ = "PUT"; break;
    case EVHTTP_REQ_DELETE: method_ = "DELETE"; break;
    case EVHTTP_REQ_PATCH: method_ = "PATCH"; break;
    case EVHTTP_REQ_TRACE: method_ = "TRACE"; break;
    default: method_ = "OTHER"; break;
  }
  path_ = RequestPath(request);
  evbuffer* in = evhttp_request_get_input_buffer(request);
  body_.resize(evbuffer_get_length(in));
  if (!body_.empty()) evbuffer_copyout(in, body_.data(), body_.size());
  server_->open_.insert(this);
}

Exchange::~Exchange() {
  if (request_ != nullptr && state_ != State::kDone) {
    if (state_ == State::kNew) {
      Reply(500, "text/plain", "the server lost this request\n");
    } else {
      End();
    }
  }
  if (server_ != nullptr) server_->Forget(this);
}

std::optional<std::string_view> Exchange::header(const char* name) const {
  if (request_ == nullptr) return std::nullopt;
  const char* v = evhttp_find_header(evhttp_request_get_input_headers(request_), name);
  if (v == nullptr) return std::nullopt;
  return std::string_view(v);
}

void Exchange::Detach() {
  if (request_ == nullptr) return;
  evhttp_connection* c = evhttp_request_get_connection(request_);
  if (c == nullptr) return;
  // The connection may carry later requests: it must not call back into this exchange when it closes, and it is
  // again timed out when its client sends nothing.
  evhttp_connection_set_closecb(c, nullptr, nullptr);
  const timeval io{static_cast<time_t>(server_->options().io_timeout.count()), 0};
  bufferevent_set_timeouts(evhttp_connection_get_bufferevent(c), &io, &io);
}

void Exchange::Abandon() {
  evhttp_connection* c = evhttp_request_get_connection(request_);
  if (c != nullptr) {
    evhttp_connection_free(c);  // frees the request with it
  } else {
    evhttp_request_free(request_);  // already cut loose from its connection by libevent
  }
  request_ = nullptr;
  server_->Forget(this);
  server_ = nullptr;
}

void Exchange::AddHeader(const std::string& name, const std::string& value) {
  if (request_ == nullptr || state_ != State::kNew) return;
  evhttp_add_header(evhttp_request_get_output_headers(request_), name.c_str(), value.c_str());
}

void Exchange::Reply(int status, std::string_view content_type, std::string_view body) {
  if (request_ == nullptr || state_ != State::kNew) return;
  state_ = State::kDone;
  Detach();
  if (closed_) return Abandon();
  evkeyvalq* headers = evhttp_request_get_output_headers(request_);
  evhttp_add_header(headers, "Content-Type", std::string(content_type).c_str());
  evbuffer* out = evbuffer_new();
  // libevent writes a HEAD answer's body too, which a kept-alive client would read as the next answer's start: a
  // HEAD gets the headers a GET would, its body's length included, and no body.
  if (evhttp_request_get_command(request_) == EVHTTP_REQ_HEAD) {
    evhttp_add_header(headers, "Content-Length", std::to_string(body.size()).c_str());
  } else {
    evbuffer_add(out, body.data(), body.size());
  }
  // Answers and frees the request, also one whose client is gone (libevent then only frees it).
  evhttp_send_reply(request_, status, ReasonPhrase(status), out);
  evbuffer_free(out);
  request_ = nullptr;
  server_->Forget(this);
  server_ = nullptr;
}

void Exchange::StartStream(int status, std::string_view content_type) {
  if (request_ == nullptr || state_ != State::kNew) return;
  state_ = State::kStreaming;
  evkeyvalq* headers = evhttp_request_get_output_headers(request_);
  evhttp_add_header(headers, "Content-Type", std::string(content_type).c_str());
  evhttp_add_header(headers, "Cache-Control", "no-cache");
  evhttp_send_reply_start(request_, status, ReasonPhrase(status));
}

void Exchange::Send(std::string_view data) {
  if (request_ == nullptr || state_ != State::kStreaming || closed_) return;
  evhttp_connection* c = evhttp_request_get_connection(request_);
  if (c == nullptr) {
    MarkClosed();
    return;
  }
  if (evbuffer_get_length(bufferevent_get_output(evhttp_connection_get_bufferevent(c))) >
      server_->options().max_pending_reply_bytes) {
    // The client reads too slowly to keep up: it is dropped rather than buffered without bound.
    MarkClosed();
    return;
  }
  evbuffer* out = evbuffer_new();
  evbuffer_add(out, data.data(), data.size());
  evhttp_send_reply_chunk(request_, out);
  evbuffer_free(out);
}

void Exchange::End() {
  if (request_ == nullptr || state_ != State::kStreaming) return;
  state_ = State::kDone;
  Detach();
  // A client gone, or dropped as too slow: the connection is closed rather than the reply ended cleanly.
  if (closed_) return Abandon();
  evhttp_send_reply_end(request_);  // frees the request
  request_ = nullptr;
  server_->Forget(this);
  server_ = nullptr;
}

void Exchange::MarkClosed() {
  if (closed_) return;
  closed_ = true;
  if (auto callback = std::move(on_close_)) callback();
}

int Exchange::fd() const {
  if (request_ == nullptr) return -1;
  evhttp_connection* c = evhttp_request_get_connection(request_);
  if (c == nullptr) return -1;
  return bufferevent_getfd(evhttp_connection_get_bufferevent(c));
}

Server::Server(ServerOptions options, Handler handler)
    : options_(std::move(options)), handler_(std::move(handler)), impl_(std::make_unique<Impl>()) {}

void Server::Forget(Exchange* exchange) {
  open_.erase(exchange);
}

void Server::Post(std::function<void()> fn) { impl_->mailbox->Post(std::move(fn)); }

Server::Poster Server::poster() const {
  return [mailbox = impl_->mailbox](std::function<void()> fn) { mailbox->Post(std::move(fn)); };
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options, Handler handler) {
  static std::once_flag threads_once;
  std::call_once(threads_once, [] { evthread_use_pthreads(); });
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("HTTP TLS needs both a certificate and a key file");
  }
  auto server = std::unique_ptr<Server>(new Server(std::move(options), std::move(handler)));
  Impl& impl = *server->impl_;
  const ServerOptions& o = server->options_;
  impl.base = event_base_new();
  if (impl.base == nullptr) return absl::InternalError("cannot create the HTTP event loop");
  impl.http = evhttp_new(impl.base);
  if (impl.http == nullptr) return absl::InternalError("cannot create the HTTP server");
  if (!o.tls_cert_file.empty()) {
    impl.ssl = SSL_CTX_new(TLS_server_method());
    if (impl.ssl == nullptr) return absl::InternalError("cannot create the HTTP TLS context: " + OpenSslError());
    SSL_CTX_set_min_proto_version(impl.ssl, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(impl.ssl, o.tls_cert_file.c_str()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot use the TLS certificate ", o.tls_cert_file, " for HTTP: ", OpenSslError()));
    }
    if (SSL_CTX_use_PrivateKey_file(impl.ssl, o.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(impl.ssl) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("cannot use the TLS key ", o.tls_key_file,
                                                     " with its certificate for HTTP: ", OpenSslError()));
    }
    evhttp_set_bevcb(
        impl.http,
        [](event_base* base, void* arg) -> bufferevent* {
          SSL* ssl = SSL_new(static_cast<SSL_CTX*>(arg));
          return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
        },
        impl.ssl);
  }
  // Bodies a little past the limit (up to 1 MiB, at most the limit again) are read and answered by the server;
  // past that libevent stops reading.
  const size_t slack = std::min(o.max_body_bytes, size_t{1} << 20) + (64 << 10);
  const size_t hard_body_bytes = o.max_body_bytes > SIZE_MAX / 2 ? o.max_body_bytes : o.max_body_bytes + slack;
  evhttp_set_max_body_size(impl.http, static_cast<ev_ssize_t>(std::min<size_t>(hard_body_bytes, SSIZE_MAX)));
  evhttp_set_max_headers_size(impl.http, static_cast<ev_ssize_t>(o.max_header_bytes));
  const timeval io_timeout{static_cast<time_t>(o.io_timeout.count()), 0};
  evhttp_set_timeout_tv(impl.http, &io_timeout);
  // Every standard method but CONNECT reaches the handler, which answers a wrong one 405 in the API's own error
  // shape (libevent's refusal is an HTML page). CONNECT and methods libevent does not know still get its own 400/501.
  evhttp_set_allowed_methods(impl.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH | EVHTTP_REQ_TRACE);
  Server* self = server.get();
  evhttp_set_gencb(
      impl.http,
      [](evhttp_request* request, void* arg) {
        auto* s = static_cast<Server*>(arg);
        if (s->stopping_) {
          // A kept-alive connection's request during the last flush: answered here, the connection closed.
          evhttp_add_header(evhttp_request_get_output_headers(request), "Connection", "close");
          evhttp_send_reply(request, 503, "Service Unavailable", nullptr);
          return;
        }
        // Refused before the body is copied into an exchange.
        const size_t bytes = evbuffer_get_length(evhttp_request_get_input_buffer(request));
        if (const size_t limit = s->options_.max_body_bytes; bytes > limit) {
          const bool json = static_cast<bool>(s->options_.too_large_body);
          const std::string text =
              json ? s->options_.too_large_body(RequestPath(request), bytes, limit)
                   : absl::StrCat("the request body is ", bytes, " bytes; allowed: at most ", limit, "\n");
          evkeyvalq* headers = evhttp_request_get_output_headers(request);
          evhttp_add_header(headers, "Content-Type", json ? "application/json" : "text/plain");
          evhttp_add_header(headers, "Connection", "close");
          evbuffer* reply = evbuffer_new();
          evbuffer_add(reply, text.data(), text.size());
          evhttp_send_reply(request, 413, "Payload Too Large", reply);
          evbuffer_free(reply);
          return;
        }
        auto exchange = std::make_shared<Exchange>(s, request);
        if (evhttp_connection* c = evhttp_request_get_connection(request)) {
          // While the request waits for its answer the client has nothing to send: only a reply it does not read
          // times out (the write timeout), not the wait for tokens, however long a queue or a prefill takes.
          const timeval io{static_cast<time_t>(s->options_.io_timeout.count()), 0};
          bufferevent_set_timeouts(evhttp_connection_get_bufferevent(c), nullptr, &io);
          // Heard when a write fails or the connection times out. The exchange clears it when it answers (Detach),
          // and it always answers before it is destroyed, so the pointer is valid whenever this fires.
          evhttp_connection_set_closecb(
              c, [](evhttp_connection*, void* arg) { static_cast<Exchange*>(arg)->MarkClosed(); }, exchange.get());
        }
        s->handler_(std::move(exchange));
      },
      self);
  errno = 0;
  evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(impl.http, o.bind_host.c_str(), static_cast<uint16_t>(o.port));
  impl.bound = bound;
  if (bound == nullptr) {
    // libevent leaves a failed bind's errno; a host name that did not resolve leaves something unrelated.
    const int error = errno;
    const bool bind_error = error == EADDRINUSE || error == EACCES || error == EADDRNOTAVAIL;
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", o.bind_host, ":", o.port,
                                               bind_error ? absl::StrCat(": ", std::strerror(error)) : ""));
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  getsockname(evhttp_bound_socket_get_fd(bound), reinterpret_cast<sockaddr*>(&addr), &len);
  server->port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  impl.wake = event_new(
      impl.base, -1, EV_PERSIST,
      [](evutil_socket_t, short, void* arg) {
        for (auto& fn : static_cast<Impl*>(arg)->mailbox->Take()) fn();
      },
      &impl);
  event_add(impl.wake, nullptr);
  impl.mailbox->Attach(impl.wake);
  impl.close_check = event_new(
      impl.base, -1, EV_PERSIST,
      [](evutil_socket_t, short, void* arg) {
        auto* s = static_cast<Server*>(arg);
        // One poll over every connection still waiting for its reply. POLLRDHUP: the client shut its side, also
        // when unread bytes (a TLS close_notify, a pipelined request) are still queued before the end.
        std::vector<Exchange*> waiting;
        std::vector<pollfd> fds;
        for (Exchange* e : s->open_) {
          if (e->closed_) continue;
          waiting.push_back(e);
          fds.push_back({e->fd(), POLLRDHUP, 0});
        }
        if (fds.empty()) return;
        if (::poll(fds.data(), fds.size(), 0) <= 0) {
          bool gone_fd = false;
          for (const pollfd& p : fds) gone_fd = gone_fd || p.fd < 0;
          if (!gone_fd) return;
        }
        for (size_t i = 0; i < waiting.size(); ++i) {
          const bool gone = fds[i].fd < 0 || (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
          // A close callback may answer, and so forget, exchanges after this one.
          if (gone && s->open_.contains(waiting[i]) && !waiting[i]->closed_) waiting[i]->MarkClosed();
        }
      },
      self);
  event_add(impl.close_check, &kCloseCheckInterval);
  impl.loop = std::thread([base = impl.base] { event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY); });
  return server;
}

Server::~Server() {
  Impl* impl = impl_.get();
  if (!impl->loop.joinable()) return;  // Start failed before the loop ran: nothing to answer
  // On the loop: what producers posted last is delivered (requests answered just before the stop reach their
  // clients), then what is still open gets 503 and is cut loose from this server.
  event_base_once(
      impl->base, -1, EV_TIMEOUT,
      [](evutil_socket_t, short, void* arg) {
        auto* s = static_cast<Server*>(arg);
        for (auto& fn : s->impl_->mailbox->Take()) fn();
        s->impl_->mailbox->Close();
        evhttp_del_accept_socket(s->impl_->http, s->impl_->bound);
        s->stopping_ = true;
        const std::vector<Exchange*> open(s->open_.begin(), s->open_.end());
        for (Exchange* e : open) {
          if (e->request_ != nullptr) {
            evhttp_add_header(evhttp_request_get_output_headers(e->request_), "Connection", "close");
          }
          if (e->state_ == Exchange::State::kNew) {
            e->Reply(503, "application/json",
                     R"({"error":{"message":"the server is stopping; retry","type":"service_unavailable","param":null,"code":null}})");
          } else {
            e->End();
          }
        }
        // Replies just queued need the loop to leave: half a second for them, none when nothing was open.
        const timeval flush{0, open.empty() ? 0 : 500 * 1000};
        event_base_loopexit(s->impl_->base, &flush);
      },
      this, nullptr);
  if (impl->loop.joinable()) impl->loop.join();
}

std::string PercentDecoded(std::string_view text) {
  size_t size = 0;
  char* decoded = evhttp_uridecode(std::string(text).c_str(), /*decode_plus=*/0, &size);
  if (decoded == nullptr) return std::string(text);
  std::string out(decoded, size);
  std::free(decoded);
  return out;
}

}  // namespace gemma::http
