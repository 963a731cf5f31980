// Every gRPC server of the project listens through here, so that a port already in use fails the start.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <memory>
#include <string>

namespace gemma {

// gRPC sets SO_REUSEPORT by default: a second process could then bind the same port without an error and be
// handed half of the first one's connections (two workers started with one --port on a host would split
// routers' calls between them). Turned off, a taken port makes BuildAndStart fail and the process says so.
void ListenExclusively(grpc::ServerBuilder& builder, const std::string& address,
                       std::shared_ptr<grpc::ServerCredentials> credentials, int* selected_port = nullptr);

}  // namespace gemma
