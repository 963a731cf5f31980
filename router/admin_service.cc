#include "router/admin_service.h"

#include "absl/strings/str_cat.h"
#include "protos/grpc_status.h"

namespace gemma {

grpc::Status AdminService::LoadAdapter(grpc::ServerContext* context,
                                       const v1::LoadAdapterRequest* request,
                                       v1::Adapter* response) {
  if (auto s = keys_.Check(context->client_metadata()); !s.ok())
    return ToGrpcStatus(s);
  if (request->path().empty())
    return ToGrpcStatus(
        absl::InvalidArgumentError("path is empty; give the adapter's folder"));
  auto loaded = groups_->LoadAdapter(request->name(), request->path());
  if (!loaded.ok()) return ToGrpcStatus(loaded.status());
  *response = *std::move(loaded);
  std::fprintf(
      stderr, "gemma-router: LoRA adapter %s loaded from %s on %d groups\n",
      request->name().c_str(), request->path().c_str(), response->groups());
  return grpc::Status::OK;
}

grpc::Status AdminService::UnloadAdapter(
    grpc::ServerContext* context, const v1::UnloadAdapterRequest* request,
    v1::UnloadAdapterResponse*) {
  if (auto s = keys_.Check(context->client_metadata()); !s.ok())
    return ToGrpcStatus(s);
  return ToGrpcStatus(groups_->UnloadAdapter(request->name()));
}

grpc::Status AdminService::ListAdapters(grpc::ServerContext* context,
                                        const v1::ListAdaptersRequest*,
                                        v1::ListAdaptersResponse* response) {
  if (auto s = keys_.Check(context->client_metadata()); !s.ok())
    return ToGrpcStatus(s);
  for (v1::Adapter& a : groups_->Adapters())
    *response->add_adapters() = std::move(a);
  return grpc::Status::OK;
}

}  // namespace gemma
