// The public port's protections, against real processes: TLS (and no plaintext unless asked for), API keys
// (UNAUTHENTICATED, never echoed or logged), the message size limit, and streams per connection.
#include <grpcpp/grpcpp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "gemma/v1/gemma.grpc.pb.h"
#include "gtest/gtest.h"
#include "router/http/test_client.h"
#include "tests/processes.h"
#include "tests/testdata.h"

namespace gemma {
namespace {

constexpr char kKey[] = "s3cret-key-4f9a";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class RouterSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = ::testing::TempDir() + "/router_security_" + std::to_string(::getpid());
    std::filesystem::create_directories(dir_);
    // A self-signed certificate for localhost and 127.0.0.1.
    const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
                            "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + dir_ + "/key.pem -out " + dir_ +
                            "/cert.pem 2>" + dir_ + "/openssl.log";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl is needed to make a test certificate: " << ReadAll(dir_ + "/openssl.log");
    std::ofstream(dir_ + "/keys") << "# API keys\n\nother-key\n" << kKey << "\n";
    worker_port_ = testing::FreePort();
    worker_ = testing::Start(WORKER_BINARY, {"--model=" + testing::GemmaTinyDir() + "/tiny-mqa", "--threads=1",
                                             "--kv_cache_mb=32", "--port=" + std::to_string(worker_port_)})
                  .release();
    metrics_port_ = testing::FreePort();
    http_port_ = testing::FreePort();
    std::remove((dir_ + "/router.port").c_str());
    router_ = testing::Start(ROUTER_BINARY, {"--workers=127.0.0.1:" + std::to_string(worker_port_),
                                             "--tls_cert=" + dir_ + "/cert.pem", "--tls_key=" + dir_ + "/key.pem",
                                             "--api_keys_file=" + dir_ + "/keys", "--max_message_bytes=65536",
                                             "--max_streams_per_connection=1", "--port_file=" + dir_ + "/router.port",
                                             "--metrics_port=" + std::to_string(metrics_port_),
                                             "--http_port=" + std::to_string(http_port_), "--served_model_name=tiny"})
                  .release();
    port_ = testing::WaitForPortFile(dir_ + "/router.port", std::chrono::seconds(30));
    ASSERT_GT(port_, 0) << router_->Err();
  }
  static void TearDownTestSuite() {
    delete router_;
    delete worker_;
  }
  static std::shared_ptr<grpc::Channel> TlsChannel() {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadAll(dir_ + "/cert.pem");
    return grpc::CreateChannel("localhost:" + std::to_string(port_), grpc::SslCredentials(o));
  }
  static grpc::Status Tokenize(grpc::Channel* channel, const std::string& key, std::chrono::milliseconds deadline,
                               const std::string& text = "hello") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    if (!key.empty()) ctx.AddMetadata("authorization", "Bearer " + key);
    v1::TokenizeRequest req;
    req.set_text(text);
    v1::TokenizeResponse resp;
    return v1::Gemma::NewStub(std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}))->Tokenize(&ctx, req, &resp);
  }

  // Four greedy tokens after "<bos> Hello", with the right API key.
  static grpc::Status GenerateWithKey(const std::shared_ptr<grpc::Channel>& channel, std::chrono::seconds deadline,
                                      v1::GenerateResponse* resp) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Bearer ") + kKey);
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    v1::GenerateRequest req;
    for (int id : {2, 3791, 323}) req.mutable_input()->mutable_token_ids()->add_ids(id);
    req.mutable_parameters()->set_max_new_tokens(4);
    return v1::Gemma::NewStub(channel)->Generate(&ctx, req, resp);
  }

  static std::string dir_;
  static testing::Process* worker_;
  static testing::Process* router_;
  static int http_port_;
  static int port_, worker_port_, metrics_port_;
};
std::string RouterSecurityTest::dir_;
testing::Process* RouterSecurityTest::worker_ = nullptr;
testing::Process* RouterSecurityTest::router_ = nullptr;
int RouterSecurityTest::port_ = 0;
int RouterSecurityTest::worker_port_ = 0;
int RouterSecurityTest::metrics_port_ = 0;
int RouterSecurityTest::http_port_ = 0;

TEST_F(RouterSecurityTest, TlsWithTheRightKeyServesAGeneration) {
  v1::GenerateResponse resp;
  const grpc::Status s = GenerateWithKey(TlsChannel(), std::chrono::seconds(30), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.tokens_size(), 4);
}

// One HTTPS request to the HTTP API, the server's certificate checked against cert.pem: the reply, or "" when the
// TLS handshake or the verification failed.
std::string HttpsCall(int port, const std::string& ca_file, const std::string& request) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const int fd = http::testing::ConnectLoopback(port);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, "localhost");
  SSL_set1_host(ssl, "localhost");
  std::string out;
  if (SSL_connect(ssl) == 1 && SSL_get_verify_result(ssl) == X509_V_OK) {
    SSL_write(ssl, request.data(), static_cast<int>(request.size()));
    char buf[4096];
    for (int n; (n = SSL_read(ssl, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  }
  SSL_free(ssl);
  ::close(fd);
  SSL_CTX_free(ctx);
  return out;
}

// The HTTP API serves TLS with the same certificate and checks the same API keys; plaintext HTTP gets nothing.
TEST_F(RouterSecurityTest, TheHttpApiUsesTheSameTlsAndKeys) {
  const std::string body = R"({"model": "tiny", "prompt": "hi", "max_tokens": 3})";
  const std::string with_key = HttpsCall(
      http_port_, dir_ + "/cert.pem",
      http::testing::RequestText("POST", "/v1/completions", body, {std::string("Authorization: Bearer ") + kKey}));
  EXPECT_NE(with_key.find("HTTP/1.1 200"), std::string::npos) << with_key;
  EXPECT_NE(with_key.find("\"completion_tokens\":3"), std::string::npos) << with_key;
  const std::string lower_case = HttpsCall(
      http_port_, dir_ + "/cert.pem",
      http::testing::RequestText("POST", "/v1/completions", body, {std::string("Authorization: bearer ") + kKey}));
  EXPECT_NE(lower_case.find("HTTP/1.1 200"), std::string::npos) << "the scheme is case-insensitive: " << lower_case;
  const std::string without =
      HttpsCall(http_port_, dir_ + "/cert.pem", http::testing::RequestText("POST", "/v1/completions", body));
  EXPECT_NE(without.find("HTTP/1.1 401"), std::string::npos) << without;
  EXPECT_EQ(without.find(kKey), std::string::npos);
  const http::testing::HttpReply plain = http::testing::Call(http_port_, "GET", "/health", "", {},
                                                             std::chrono::seconds(3));
  EXPECT_EQ(plain.status, 0) << "plaintext HTTP answered on the TLS port: " << plain.head;
}

TEST_F(RouterSecurityTest, PlaintextClientsCannotTalkToTheTlsPort) {
  auto plain = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  const grpc::Status s = Tokenize(plain.get(), kKey, std::chrono::seconds(5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(RouterSecurityTest, MissingOrWrongKeysAreUnauthenticatedAndNeverEchoedOrLogged) {
  auto channel = TlsChannel();
  const grpc::Status missing = Tokenize(channel.get(), "", std::chrono::seconds(10));
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(missing.error_message().find("Bearer"), std::string::npos) << "says how to send a key";
  const std::string wrong_key = "wrong-key-77e1";
  const grpc::Status wrong = Tokenize(channel.get(), wrong_key, std::chrono::seconds(10));
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message().find(wrong_key), std::string::npos);
  // A prefix of the right key is not the key.
  EXPECT_EQ(Tokenize(channel.get(), std::string(kKey).substr(0, 6), std::chrono::seconds(10)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Tokenize(channel.get(), "other-key", std::chrono::seconds(10)).ok()) << "every key in the file works";
  EXPECT_TRUE(Tokenize(channel.get(), kKey, std::chrono::seconds(10)).ok());
  const std::string log = router_->Err();
  EXPECT_EQ(log.find(kKey), std::string::npos);
  EXPECT_EQ(log.find(wrong_key), std::string::npos);
  const std::string metrics = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_NE(metrics.find("gemma_router_requests_total{code=\"UNAUTHENTICATED\",endpoint=\"Tokenize\",outcome=\"rejected\","
                         "protocol=\"grpc\"} 3"),
            std::string::npos) << metrics;
}

TEST_F(RouterSecurityTest, AMessageOverTheLimitIsResourceExhausted) {
  auto channel = TlsChannel();
  const grpc::Status s = Tokenize(channel.get(), kKey, std::chrono::seconds(10), std::string(100000, 'a'));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(Tokenize(channel.get(), kKey, std::chrono::seconds(10), std::string(1000, 'a')).ok());
  // Over HTTP: 413, in OpenAI's error shape, naming the sizes and the flag.
  const std::string body = R"({"model": "tiny", "max_tokens": 3, "prompt": ")" + std::string(100000, 'a') + "\"}";
  const std::string big = HttpsCall(
      http_port_, dir_ + "/cert.pem",
      http::testing::RequestText("POST", "/v1/completions", body, {std::string("Authorization: Bearer ") + kKey}));
  EXPECT_NE(big.find("HTTP/1.1 413"), std::string::npos) << big;
  EXPECT_NE(big.find("\"message\":\"the request body is " + std::to_string(body.size()) +
                     " bytes; allowed: at most 65536 (the router's --max_message_bytes)\""),
            std::string::npos) << big;
  EXPECT_NE(big.find("\"code\":\"request_too_large\""), std::string::npos) << big;
  const std::string metrics = testing::HttpGet(metrics_port_, "/metrics");
  EXPECT_NE(metrics.find("gemma_router_requests_total{code=\"RESOURCE_EXHAUSTED\",endpoint=\"/v1/completions\","
                         "outcome=\"rejected\",protocol=\"http\"} 1"),
            std::string::npos) << metrics;
}

TEST_F(RouterSecurityTest, ACallBeyondTheStreamLimitWaitsForItsConnection) {
  // A stream held open uses the connection's only stream: it has streamed a token (so it holds the stream, and its
  // group is busy rather than idle and probed), then its worker is frozen.
  auto busy = TlsChannel();
  grpc::ClientContext held_ctx;
  held_ctx.AddMetadata("authorization", std::string("Bearer ") + kKey);
  held_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateRequest req;
  for (int id : {2, 3791, 323}) req.mutable_input()->mutable_token_ids()->add_ids(id);
  req.mutable_parameters()->set_max_new_tokens(500);
  auto held = v1::Gemma::NewStub(busy)->GenerateStream(&held_ctx, req);
  v1::GenerateStreamResponse event;
  bool streamed = false;
  while (!streamed && held->Read(&event)) streamed = event.has_token();
  ASSERT_TRUE(streamed) << held->Finish().error_message();
  ASSERT_EQ(::kill(worker_->pid, SIGSTOP), 0);
  EXPECT_EQ(Tokenize(busy.get(), kKey, std::chrono::milliseconds(1500)).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED) << "a second stream on the same connection waits";
  auto other = TlsChannel();
  EXPECT_TRUE(Tokenize(other.get(), kKey, std::chrono::seconds(10)).ok()) << "another connection is served";
  ASSERT_EQ(::kill(worker_->pid, SIGCONT), 0);
  while (held->Read(&event)) {
  }
  const grpc::Status s = held->Finish();
  EXPECT_TRUE(s.ok()) << "the held call completes once its worker runs again: " << s.error_message();
}

// Startup refuses settings that would leave the port unprotected by mistake, with a reason.
TEST_F(RouterSecurityTest, BadSecuritySettingsStopTheRouterWithAReason) {
  const std::string workers = "--workers=127.0.0.1:" + std::to_string(worker_port_);
  std::ofstream(dir_ + "/empty-keys") << "# none yet\n\n";
  std::ofstream(dir_ + "/not-a-cert.pem") << "hello\n";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{workers}, "--plaintext"},
      {{workers, "--plaintext", "--tls_cert=" + dir_ + "/cert.pem", "--tls_key=" + dir_ + "/key.pem"}, "not both"},
      {{workers, "--tls_cert=" + dir_ + "/cert.pem"}, "--tls_key"},
      {{workers, "--tls_cert=" + dir_ + "/missing.pem", "--tls_key=" + dir_ + "/key.pem"}, "missing.pem"},
      {{workers, "--tls_cert=" + dir_ + "/not-a-cert.pem", "--tls_key=" + dir_ + "/key.pem"}, "not a PEM certificate"},
      {{workers, "--plaintext", "--api_keys_file=" + dir_ + "/empty-keys"}, "holds no key"},
      {{workers, "--plaintext", "--max_message_bytes=10"}, "--max_message_bytes"},
      {{"--plaintext", "--workers_dns=no-port-here"}, "HOST:PORT"},
  };
  for (const auto& [args, expected] : cases) {
    auto p = testing::Start(ROUTER_BINARY, args);
    EXPECT_EQ(p->WaitExit(std::chrono::seconds(20)), 2) << expected;
    EXPECT_NE(p->Err().find(expected), std::string::npos) << p->Err();
  }
}

}  // namespace
}  // namespace gemma
