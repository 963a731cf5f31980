#include "router/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gemma {

ApiKeys::Digest ApiKeys::Hash(const char* data, size_t size) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(data), size, d.data());
  return d;
}

absl::StatusOr<ApiKeys> ApiKeys::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read the API key file ", path));
  std::vector<std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    std::string key(absl::StripAsciiWhitespace(line));
    if (!key.empty() && key[0] != '#') keys.push_back(std::move(key));
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the API key file ", path, " holds no key (one key per line)"));
  }
  return FromKeys(keys);
}

ApiKeys ApiKeys::FromKeys(const std::vector<std::string>& keys) {
  ApiKeys k;
  for (const auto& key : keys) k.digests_.push_back(Hash(key.data(), key.size()));
  return k;
}

absl::Status ApiKeys::Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  if (!enabled()) return absl::OkStatus();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("this server needs an API key: send the metadata \"authorization: Bearer <key>\"");
  }
  const std::string_view value(it->second.data(), it->second.size());
  return CheckAuthorization(&value);
}

absl::Status ApiKeys::CheckAuthorization(const std::string_view* authorization) const {
  if (!enabled()) return absl::OkStatus();
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization == nullptr) {
    return absl::UnauthenticatedError("this server needs an API key: send the header \"Authorization: Bearer <key>\"");
  }
  const std::string_view value = *authorization;
  // The scheme's name is case-insensitive (RFC 9110, 11.1): "bearer <key>" is the same credentials.
  const bool bearer = value.size() > kBearer.size() &&
                      absl::EqualsIgnoreCase(absl::string_view(value.data(), kBearer.size()),
                                             absl::string_view(kBearer.data(), kBearer.size()));
  if (!bearer) {
    return absl::UnauthenticatedError("the authorization must be \"Bearer <key>\"");
  }
  const Digest given = Hash(value.data() + kBearer.size(), value.size() - kBearer.size());
  int matched = 0;
  for (const Digest& d : digests_) matched |= CRYPTO_memcmp(d.data(), given.data(), d.size()) == 0 ? 1 : 0;
  if (!matched) return absl::UnauthenticatedError("the API key is not accepted");
  return absl::OkStatus();
}

}  // namespace gemma
