// RETURN_IF_ERROR and ASSIGN_OR_RETURN: early returns on a failed absl::Status / absl::StatusOr, with the usual
// Google semantics. Header only, on Abseil alone (target gemma_status_macros), so every library may use it.
//
//   RETURN_IF_ERROR(Validate(request));                  // returns the status when it is not OK
//   ASSIGN_OR_RETURN(auto ids, tokenizer.Encode(text));  // declares `ids` (the value), or returns the status
//   ASSIGN_OR_RETURN(w->embed_, Matrix(...));            // assigns to an existing lvalue
//
// Each evaluates its expression exactly once. The enclosing function returns absl::Status or any
// absl::StatusOr<T>. ASSIGN_OR_RETURN expands to more than one statement: never the body of an unbraced `if`;
// its left side may not hold an unparenthesized comma (the expression may).
#pragma once

#include <utility>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GEMMA_STATUS_MACROS_CONCAT_INNER_(a, b) a##b
#define GEMMA_STATUS_MACROS_CONCAT_(a, b) GEMMA_STATUS_MACROS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(...)                                                  \
  do {                                                                        \
    ::absl::Status gemma_status_macros_status_ = (__VA_ARGS__);               \
    if (ABSL_PREDICT_FALSE(!gemma_status_macros_status_.ok())) {              \
      return gemma_status_macros_status_;                                     \
    }                                                                         \
  } while (false)

#define ASSIGN_OR_RETURN(lhs, ...)                                                                        \
  GEMMA_ASSIGN_OR_RETURN_IMPL_(GEMMA_STATUS_MACROS_CONCAT_(gemma_status_macros_statusor_, __LINE__), lhs, \
                               __VA_ARGS__)

#define GEMMA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, ...)                    \
  auto statusor = (__VA_ARGS__);                                            \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) return std::move(statusor).status(); \
  lhs = *std::move(statusor)
