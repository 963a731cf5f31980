#include "router/http/http_server.h"
#include "router/http/test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace gemma::http {
namespace {

using namespace std::chrono_literals;

using testing::ConnectLoopback;
using testing::SendAll;

int Connect(int port) { return ConnectLoopback(port); }

std::string ReadAll(int fd, std::chrono::milliseconds limit = 5000ms) { return testing::ReadUntilClosed(fd, limit); }

std::string Request(int port, const std::string& raw, std::chrono::milliseconds limit = 5000ms) {
  const int fd = Connect(port);
  SendAll(fd, raw);
  std::string out = ReadAll(fd, limit);
  ::close(fd);
  return out;
}

std::string Post(const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(HttpServerTest, RepliesWithStatusHeadersAndBody) {
  auto server = Server::Start({.bind_host = "127.0.0.1"}, [](std::shared_ptr<Exchange> e) {
    const std::string answer = std::string(e->method()) + " " + std::string(e->path()) + " " + e->body() + " " +
                               std::string(e->header("X-Test").value_or("none"));
    e->Reply(e->path() == "/missing" ? 404 : 200, "text/plain", answer);
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  const std::string ok = Request(port, "POST /a?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Test: yes\r\n"
                                       "Content-Length: 5\r\n\r\nhello");
  EXPECT_NE(ok.find("HTTP/1.1 200"), std::string::npos) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain"), std::string::npos) << ok;
  EXPECT_NE(ok.find("POST /a hello yes"), std::string::npos) << ok;
  const std::string missing = Request(port, "GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(missing.find("HTTP/1.1 404"), std::string::npos) << missing;
  // The path as sent: "//v1/x" is not an authority "v1" with a path "/x".
  const std::string doubled = Request(port, "GET //v1/x?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(doubled.find("GET //v1/x  none"), std::string::npos) << doubled;
}

// A HEAD answer has the GET's headers and no body: on a kept-alive connection the next answer must start right
// after the HEAD's headers.
TEST(HttpServerTest, AHeadAnswerHasNoBody) {
  auto server = Server::Start({.bind_host = "127.0.0.1"}, [](std::shared_ptr<Exchange> e) {
    e->Reply(200, "application/json", "{\"status\":\"ok\"}");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string both = Request((*server)->port(),
                                   "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                                   "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const size_t head_end = both.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos) << both;
  const std::string head = both.substr(0, head_end);
  EXPECT_NE(head.find("Content-Length: 15"), std::string::npos) << "the GET's length: " << head;
  EXPECT_EQ(both.compare(head_end + 4, 9, "HTTP/1.1 "), 0) << "a body followed the HEAD answer: " << both;
  EXPECT_NE(both.find("{\"status\":\"ok\"}", head_end), std::string::npos) << "the GET's answer: " << both;
}

TEST(HttpServerTest, StreamsChunksPostedFromAnotherThread) {
  std::thread producer;
  auto server = Server::Start({.bind_host = "127.0.0.1"}, [&producer](std::shared_ptr<Exchange> e) {
    e->StartStream(200, "text/event-stream");
    Server::Poster post = e->server().poster();
    producer = std::thread([post, e] {
      for (int i = 0; i < 3; ++i) {
        post([e, i] { e->Send("data: " + std::to_string(i) + "\n\n"); });
        std::this_thread::sleep_for(20ms);
      }
      post([e] { e->End(); });
    });
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string out = Request((*server)->port(), Post("/s", "{}"));
  producer.join();
  EXPECT_NE(out.find("Transfer-Encoding: chunked"), std::string::npos) << out;
  EXPECT_NE(out.find("data: 0\n\n"), std::string::npos) << out;
  EXPECT_LT(out.find("data: 0"), out.find("data: 2")) << out;
  EXPECT_NE(out.find("\r\n0\r\n\r\n"), std::string::npos) << "the chunked reply was not ended: " << out;
}

TEST(HttpServerTest, RefusesBodiesAndHeadersPastTheirBounds) {
  std::atomic<int> handled{0};
  auto server = Server::Start({.bind_host = "127.0.0.1", .max_body_bytes = 100, .max_header_bytes = 512},
                              [&handled](std::shared_ptr<Exchange> e) {
                                ++handled;
                                e->Reply(200, "text/plain", "ok");
                              });
  ASSERT_TRUE(server.ok()) << server.status();
  // Past the limit, within the slack the server reads: its own answer, naming both sizes.
  const std::string big = Request((*server)->port(), Post("/x", std::string(150, 'a')));
  EXPECT_NE(big.find("HTTP/1.1 413"), std::string::npos) << big;
  EXPECT_NE(big.find("the request body is 150 bytes; allowed: at most 100"), std::string::npos) << big;
  // Far past it: libevent stops reading, and still 413.
  const std::string huge = Request((*server)->port(), Post("/x", std::string(200000, 'a')));
  EXPECT_NE(huge.find("HTTP/1.1 413"), std::string::npos) << huge;
  std::string many_headers = "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  for (int i = 0; i < 100; ++i) many_headers += "X-H" + std::to_string(i) + ": value\r\n";
  const std::string headers = Request((*server)->port(), many_headers + "\r\n");
  EXPECT_EQ(headers.find("HTTP/1.1 200"), std::string::npos) << headers;
  EXPECT_EQ(handled.load(), 0);
}

TEST(HttpServerTest, NoticesAClientThatLeavesBeforeItsReply) {
  absl::Notification closed;
  std::shared_ptr<Exchange> held;
  auto server = Server::Start({.bind_host = "127.0.0.1"}, [&](std::shared_ptr<Exchange> e) {
    e->OnClose([&closed] { closed.Notify(); });
    held = e;  // never answered while the client is there
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = Connect((*server)->port());
  SendAll(fd, Post("/wait", "{}"));
  std::this_thread::sleep_for(300ms);
  ::close(fd);
  EXPECT_TRUE(closed.WaitForNotificationWithTimeout(absl::Seconds(5)));
  (*server)->Post([&held] { held.reset(); });
}

TEST(HttpServerTest, DropsAClientThatStallsMidRequest) {
  auto server = Server::Start({.bind_host = "127.0.0.1", .io_timeout = std::chrono::seconds(1)},
                              [](std::shared_ptr<Exchange> e) { e->Reply(200, "text/plain", "ok"); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = Connect((*server)->port());
  SendAll(fd, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");  // 7 bytes short, forever
  const auto start = std::chrono::steady_clock::now();
  const std::string out = ReadAll(fd, 6000ms);
  const auto waited = std::chrono::steady_clock::now() - start;
  ::close(fd);
  EXPECT_EQ(out.find("200"), std::string::npos) << out;
  EXPECT_LT(waited, 5s) << "the stalled client was not dropped";
}

TEST(HttpServerTest, AnExchangeDroppedUnansweredGets500) {
  auto server = Server::Start({.bind_host = "127.0.0.1"}, [](std::shared_ptr<Exchange>) {});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string out = Request((*server)->port(), Post("/x", "{}"));
  EXPECT_NE(out.find("HTTP/1.1 500"), std::string::npos) << out;
}

TEST(HttpServerTest, BadTlsFilesAreClearErrors) {
  auto s = Server::Start({.tls_cert_file = "/nonexistent/cert.pem", .tls_key_file = "/nonexistent/key.pem"},
                         [](std::shared_ptr<Exchange>) {});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("/nonexistent/cert.pem"), std::string::npos) << s.status();
  auto half = Server::Start({.tls_cert_file = "/x.pem"}, [](std::shared_ptr<Exchange>) {});
  EXPECT_FALSE(half.ok());
}

}  // namespace
}  // namespace gemma::http

namespace gemma::http {
namespace {

// --http_timeout_s bounds a client that sends or reads nothing, not a request that waits for its answer: a stream
// whose tokens come slower than the timeout, and a reply that takes longer than it, both arrive whole.
TEST(HttpServerTest, AnswersSlowerThanTheTimeoutStillArrive) {
  std::vector<std::thread> producers;
  auto server = Server::Start({.bind_host = "127.0.0.1", .io_timeout = std::chrono::seconds(1)},
                              [&producers](std::shared_ptr<Exchange> e) {
                                Server::Poster post = e->server().poster();
                                const bool stream = e->path() == "/stream";
                                if (stream) e->StartStream(200, "text/event-stream");
                                producers.emplace_back([post, e, stream] {
                                  for (int i = 0; i < 3 && stream; ++i) {
                                    std::this_thread::sleep_for(std::chrono::milliseconds(1300));
                                    post([e, i] { e->Send("data: " + std::to_string(i) + "\n\n"); });
                                  }
                                  if (!stream) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
                                  post([e, stream] { stream ? e->End() : e->Reply(200, "text/plain", "late"); });
                                });
                              });
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string streamed = Request((*server)->port(), Post("/stream", "{}"), 15s);
  EXPECT_NE(streamed.find("data: 2"), std::string::npos) << streamed;
  EXPECT_NE(streamed.find("\r\n0\r\n\r\n"), std::string::npos) << "cut before its end: " << streamed;
  const std::string late = Request((*server)->port(), Post("/unary", "{}"), 15s);
  EXPECT_NE(late.find("late"), std::string::npos) << late;
  for (auto& t : producers) t.join();
}

}  // namespace
}  // namespace gemma::http
