// A whole small file (a certificate, a key list) as bytes, with an error that names it.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gemma {

// `what` names the file's role in the error: "cannot read the TLS key file /etc/tls/key.pem".
inline absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " ", path));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace gemma
