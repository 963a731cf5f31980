// Optional API keys on the public API: "authorization: Bearer <key>" in the request metadata.
#pragma once

#include <array>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/string_ref.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gemma {

class ApiKeys {
 public:
  // No keys: every request is let in.
  ApiKeys() = default;
  // One key per line; blank lines and lines starting with '#' are skipped. A file with no key is an error
  // (an empty Secret must not turn authentication off).
  static absl::StatusOr<ApiKeys> FromFile(const std::string& path);
  static ApiKeys FromKeys(const std::vector<std::string>& keys);

  bool enabled() const { return !digests_.empty(); }
  // OK when keys are off or the metadata carries one of them; Unauthenticated otherwise. The key is never
  // echoed, and it is compared in constant time (digests, so not even its length leaks).
  absl::Status Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;
  // The same for an HTTP request: `authorization` is its Authorization header's value, null when it has none.
  absl::Status CheckAuthorization(const std::string_view* authorization) const;

 private:
  using Digest = std::array<unsigned char, 32>;
  static Digest Hash(const char* data, size_t size);
  std::vector<Digest> digests_;
};

}  // namespace gemma
