// Clients' JSON (HTTP bodies, response_format schemas), parsed with a bound on nesting: nlohmann's parser does not
// recurse, but dump() and every walk of a value do, so a value nested deep enough would exhaust the stack of the
// thread that walks it.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

namespace gemma {

inline constexpr int kMaxJsonDepth = 64;

// The value, or a discarded one (is_discarded()) when `text` is not JSON or nests deeper than kMaxJsonDepth
// (*too_deep is then set).
inline nlohmann::json ParseBoundedJson(std::string_view text, bool* too_deep) {
  *too_deep = false;
  nlohmann::json value = nlohmann::json::parse(
      text,
      [too_deep](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > kMaxJsonDepth) *too_deep = true;
        return !*too_deep;
      },
      /*allow_exceptions=*/false);
  if (*too_deep) return nlohmann::json(nlohmann::json::value_t::discarded);
  return value;
}

}  // namespace gemma
