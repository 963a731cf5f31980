#include "worker/grpc_store.h"

#include <grpcpp/grpcpp.h>

#include <stdexcept>

namespace gemma {

grpc::Status RendezvousService::Set(grpc::ServerContext*, const worker::v1::SetRequest* request,
                                    worker::v1::SetResponse*) {
  {
    absl::MutexLock lock(&mu_);
    values_[request->key()] = request->value();
  }
  cv_.SignalAll();
  return grpc::Status::OK;
}

grpc::Status RendezvousService::Get(grpc::ServerContext* context, const worker::v1::GetRequest* request,
                                    worker::v1::GetResponse* response) {
  absl::MutexLock lock(&mu_);
  auto all_set = [&] {
    mu_.AssertHeld();
    for (const auto& k : request->keys()) {
      if (!values_.count(k)) return false;
    }
    return true;
  };
  // Bounded by the caller's deadline, checked in slices so cancellation is noticed.
  while (!all_set()) {
    if (context->IsCancelled() || std::chrono::system_clock::now() > context->deadline()) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "rendezvous keys not set in time");
    }
    cv_.WaitWithTimeout(&mu_, absl::Milliseconds(100));
  }
  for (const auto& k : request->keys()) response->add_values(values_[k]);
  return grpc::Status::OK;
}

GrpcStore::GrpcStore(const std::string& address, std::chrono::milliseconds timeout)
    : address_(address),
      timeout_(timeout),
      stub_(worker::v1::Rendezvous::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}

void GrpcStore::set(const std::string& key, const std::vector<char>& data) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
  ctx.set_wait_for_ready(true);  // the leader may not be up yet
  worker::v1::SetRequest req;
  req.set_key(key);
  req.set_value(std::string(data.begin(), data.end()));
  worker::v1::SetResponse resp;
  const grpc::Status s = stub_->Set(&ctx, req, &resp);
  if (!s.ok()) throw std::runtime_error("rendezvous with leader " + address_ + " failed: " + s.error_message());
}

std::vector<char> GrpcStore::get(const std::string& key) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
  ctx.set_wait_for_ready(true);
  worker::v1::GetRequest req;
  req.add_keys(key);
  worker::v1::GetResponse resp;
  const grpc::Status s = stub_->Get(&ctx, req, &resp);
  if (!s.ok() || resp.values_size() != 1) {
    throw std::runtime_error("rendezvous with leader " + address_ + " failed: " + s.error_message());
  }
  return std::vector<char>(resp.values(0).begin(), resp.values(0).end());
}

void GrpcStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  ctx.set_wait_for_ready(true);
  worker::v1::GetRequest req;
  for (const auto& k : keys) req.add_keys(k);
  worker::v1::GetResponse resp;
  const grpc::Status s = stub_->Get(&ctx, req, &resp);
  if (!s.ok()) throw std::runtime_error("Timed out waiting for peers at " + address_ + ": " + s.error_message());
}

}  // namespace gemma
