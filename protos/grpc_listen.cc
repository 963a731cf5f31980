#include "protos/grpc_listen.h"

#include <grpc/grpc.h>

namespace gemma {

void ListenExclusively(grpc::ServerBuilder& builder, const std::string& address,
                       std::shared_ptr<grpc::ServerCredentials> credentials, int* selected_port) {
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, std::move(credentials), selected_port);
}

}  // namespace gemma
