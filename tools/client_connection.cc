#include "tools/client_connection.h"

#include <cstdlib>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "shard/checkpoint/read_file.h"

namespace gemma {
void ClientConnection::Prepare(grpc::ClientContext* context, std::chrono::milliseconds timeout) const {
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  if (!api_key.empty()) context->AddMetadata("authorization", "Bearer " + api_key);
}

void AddConnectionFlags(Args& args) {
  args.Flag("server", "the router's address, HOST:PORT")
      .Flag("tls", "connect over TLS, trusting the system's certificate authorities", true)
      .Flag("tls-ca", "connect over TLS, trusting this PEM certificate (or CA bundle)")
      .Flag("api-key-file", "file whose first line is the API key (default: the GEMMA_API_KEY environment variable)");
}

absl::StatusOr<ClientConnection> Connect(const Args& args) {
  if (!args.Has("server")) return absl::InvalidArgumentError("--server HOST:PORT is required");
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (args.Has("tls") || args.Has("tls-ca")) {
    grpc::SslCredentialsOptions options;
    if (args.Has("tls-ca")) {
      auto pem = ReadWholeFile(args.Get("tls-ca"), "TLS certificate file");
      if (!pem.ok()) return pem.status();
      options.pem_root_certs = *pem;
    }
    credentials = grpc::SslCredentials(options);
  }
  ClientConnection c;
  if (args.Has("api-key-file")) {
    auto key = ReadWholeFile(args.Get("api-key-file"), "API key file");
    if (!key.ok()) return key.status();
    std::istringstream lines(*key);
    std::getline(lines, c.api_key);
    c.api_key = std::string(absl::StripAsciiWhitespace(c.api_key));
    if (c.api_key.empty()) return absl::InvalidArgumentError(absl::StrCat(args.Get("api-key-file"), " holds no key"));
  } else if (const char* env = std::getenv("GEMMA_API_KEY"); env != nullptr) {
    c.api_key = std::string(absl::StripAsciiWhitespace(env));
  }
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(64 << 20);
  c.channel = grpc::CreateCustomChannel(args.Get("server"), credentials, channel_args);
  return c;
}

}  // namespace gemma
