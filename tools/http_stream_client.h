// A small blocking HTTP/1.1 client for the load generator: POSTs a JSON body and hands each server-sent event's
// data to a callback as it arrives (plaintext only; one request per connection).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace gemma {

// Connects to host:port, POSTs `body` to `path`, and calls `on_event` with each "data: ..." payload as it is read.
// The reply's status when it is not 200 comes back as an error with its body.
absl::Status PostAndStreamEvents(const std::string& host, int port, const std::string& path, const std::string& body,
                                 const std::function<void(std::string_view data)>& on_event);

}  // namespace gemma
