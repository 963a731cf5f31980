// Rendezvous over gRPC: rank 0 hosts a key-value service; every rank reaches it through a Gloo store client.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "gemma/worker/v1/rendezvous.grpc.pb.h"
#include "gloo/rendezvous/store.h"

namespace gemma {

// Thread-safe.
class RendezvousService final : public worker::v1::Rendezvous::Service {
 public:
  grpc::Status Set(grpc::ServerContext* context, const worker::v1::SetRequest* request,
                   worker::v1::SetResponse* response) override ABSL_LOCKS_EXCLUDED(mu_);
  grpc::Status Get(grpc::ServerContext* context, const worker::v1::GetRequest* request,
                   worker::v1::GetResponse* response) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;  // signalled when a value is set
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

// A Gloo store backed by a RendezvousService at `address` (host:port). Gloo
// expects failures as exceptions; they carry the gRPC error. Thread-compatible.
class GrpcStore : public gloo::rendezvous::Store {
 public:
  GrpcStore(const std::string& address, std::chrono::milliseconds timeout);
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::string address_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<worker::v1::Rendezvous::Stub> stub_;
};

}  // namespace gemma
