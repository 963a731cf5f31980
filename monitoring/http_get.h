// A plain HTTP GET over loopback under a deadline: how the worker launcher reads its ranks' /metrics.
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace gemma {

// The body of GET `path` from 127.0.0.1:`port` (HTTP/1.0, so the server closes after one plain, unchunked reply).
// Unavailable when nothing answers, DeadlineExceeded past `timeout` (connecting included), Internal when the
// status is not 200.
absl::StatusOr<std::string> LoopbackHttpGet(int port, const std::string& path, std::chrono::milliseconds timeout);

}  // namespace gemma
