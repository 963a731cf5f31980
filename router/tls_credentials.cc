#include "router/tls_credentials.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "shard/checkpoint/read_file.h"

namespace gemma {
namespace {

// Parses both PEM blocks, so a wrong file is named here rather than failing inside gRPC without a reason.
absl::Status CheckPair(const std::string& cert, const std::string& key, const std::string& cert_file,
                       const std::string& key_file) {
  BIO* cb = BIO_new_mem_buf(cert.data(), static_cast<int>(cert.size()));
  X509* x509 = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO_free(cb);
  BIO* kb = BIO_new_mem_buf(key.data(), static_cast<int>(key.size()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  BIO_free(kb);
  absl::Status s;
  if (x509 == nullptr) {
    s = absl::InvalidArgumentError(absl::StrCat(cert_file, " is not a PEM certificate (-----BEGIN CERTIFICATE-----)"));
  } else if (pkey == nullptr) {
    s = absl::InvalidArgumentError(absl::StrCat(key_file, " is not an unencrypted PEM private key"));
  } else if (X509_check_private_key(x509, pkey) != 1) {
    s = absl::InvalidArgumentError(absl::StrCat("the key ", key_file, " does not belong to the certificate ", cert_file));
  }
  X509_free(x509);
  EVP_PKEY_free(pkey);
  return s;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> PublicServerCredentials(const std::string& cert_file,
                                                                                 const std::string& key_file,
                                                                                 bool plaintext) {
  const bool tls = !cert_file.empty() || !key_file.empty();
  if (tls && plaintext) return absl::InvalidArgumentError("give either --tls_cert and --tls_key, or --plaintext; not both");
  if (plaintext) return grpc::InsecureServerCredentials();
  if (!tls) {
    return absl::InvalidArgumentError(
        "the public port needs TLS: give --tls_cert and --tls_key (PEM files), or --plaintext to serve unencrypted");
  }
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert (PEM certificate chain) and --tls_key (PEM private key)");
  }
  ASSIGN_OR_RETURN(const std::string cert, ReadWholeFile(cert_file, "TLS certificate file"));
  ASSIGN_OR_RETURN(const std::string key, ReadWholeFile(key_file, "TLS key file"));
  RETURN_IF_ERROR(CheckPair(cert, key, cert_file, key_file));
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({key, cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace gemma
