// Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the HTTP status OpenAI uses.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace gemma::openai {

struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the request field at fault; empty: none
  std::string code;   // empty: null

  std::string ToJson() const;
};

// A bad field: 400, naming it.
ApiError BadField(std::string param, std::string message);
// A request body past the router's --max_message_bytes: 413, naming both sizes.
ApiError BodyTooLarge(size_t body_bytes, size_t max_body_bytes);
// From the router's status codes: InvalidArgument/OutOfRange/FailedPrecondition 400, Unauthenticated 401,
// NotFound 404, ResourceExhausted 429, Unavailable and Cancelled (by the server) 503, DeadlineExceeded 504, the
// rest 500.
ApiError FromStatus(const absl::Status& status);
// The router's status code that an HTTP status stands for (for metrics); 413 is ResourceExhausted, as gRPC's
// answer to a message past the limit.
absl::StatusCode CodeOf(const ApiError& error);

}  // namespace gemma::openai
