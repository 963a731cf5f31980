// How `gemma client` and `gemma bench --server` reach a router: address, TLS and API key flags.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "tools/args.h"

namespace gemma {

struct ClientConnection {
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;  // empty: none sent
  // Adds the API key (if any) and the deadline to one call.
  void Prepare(grpc::ClientContext* context, std::chrono::milliseconds timeout) const;
};

// Declares --server, --tls, --tls-ca, --api-key-file.
void AddConnectionFlags(Args& args);
// The API key comes from --api-key-file or the environment variable GEMMA_API_KEY, never from a flag's value
// (which any user of the machine could read from the process list).
absl::StatusOr<ClientConnection> Connect(const Args& args);

}  // namespace gemma
