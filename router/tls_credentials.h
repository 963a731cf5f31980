// Credentials of the public port: TLS from PEM files, plaintext only when asked for.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"

namespace gemma {

// InvalidArgument, naming the file and what is wrong, when the pair is incomplete, unreadable, not PEM, or the key
// does not belong to the certificate; or when neither TLS nor plaintext is chosen.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> PublicServerCredentials(const std::string& cert_file,
                                                                                 const std::string& key_file,
                                                                                 bool plaintext);

}  // namespace gemma
