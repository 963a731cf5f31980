// The Admin gRPC service: operators load and unload LoRA adapters on every
// worker group at run time.
#pragma once

#include "gemma/v1/gemma.grpc.pb.h"
#include "router/api_keys.h"
#include "router/group_set.h"

namespace gemma {

// Thread-safe. With API keys configured every call needs one, as on the Gemma
// service.
class AdminService final : public v1::Admin::Service {
 public:
  AdminService(GroupSet* groups, ApiKeys keys)
      : groups_(groups), keys_(std::move(keys)) {}
  grpc::Status LoadAdapter(grpc::ServerContext* context,
                           const v1::LoadAdapterRequest* request,
                           v1::Adapter* response) override;
  grpc::Status UnloadAdapter(grpc::ServerContext* context,
                             const v1::UnloadAdapterRequest* request,
                             v1::UnloadAdapterResponse* response) override;
  grpc::Status ListAdapters(grpc::ServerContext* context,
                            const v1::ListAdaptersRequest* request,
                            v1::ListAdaptersResponse* response) override;

 private:
  GroupSet* groups_;
  const ApiKeys keys_;
};

}  // namespace gemma
