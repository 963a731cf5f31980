// For tests of structured output: a JSON Schema validator for the supported subset, written apart from the grammar
// code so that it checks it, and ten schemas that cover the subset (each bounds its strings and arrays, so a
// sampled output always ends).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "nlohmann/json.hpp"

namespace gemma::structured::testing {

using nlohmann::json;

// Valid(value, schema, root, why): whether `value` validates against `schema` (`root` resolves $ref); what failed
// is appended to `why`.
inline size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// A JSON Schema validator for the subset; `root` resolves $ref. Appends what failed to `why`.
inline bool Valid(const json& v, const json& s, const json& root, std::string* why);

inline bool ValidType(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") {
    return v.is_number_integer() || (v.is_number_float() && v.get<double>() == static_cast<int64_t>(v.get<double>()));
  }
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

inline bool Fail(std::string* why, const std::string& what, const json& v) {
  *why += what + " fails for " + v.dump() + "; ";
  return false;
}

inline bool Valid(const json& v, const json& s, const json& root, std::string* why) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    if (ref == "#") return Valid(v, root, root, why);
    const size_t slash = ref.rfind('/');
    const std::string defs = ref.substr(2, slash - 2), name = ref.substr(slash + 1);
    return Valid(v, root[defs][name], root, why);
  }
  if (s.contains("type")) {
    bool any = false;
    if (s["type"].is_string()) {
      any = ValidType(v, s["type"]);
    } else {
      for (const json& t : s["type"]) any = any || ValidType(v, t);
    }
    if (!any) return Fail(why, "type " + s["type"].dump(), v);
  }
  if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end()) {
    return Fail(why, "enum", v);
  }
  if (s.contains("const") && s["const"] != v) return Fail(why, "const", v);
  if (s.contains("anyOf")) {
    bool any = false;
    for (const json& b : s["anyOf"]) {
      std::string ignored;
      any = any || Valid(v, b, root, &ignored);
    }
    if (!any) return Fail(why, "anyOf", v);
  }
  if (s.contains("oneOf")) {
    int n = 0;
    for (const json& b : s["oneOf"]) {
      std::string ignored;
      n += Valid(v, b, root, &ignored);
    }
    if (n != 1) return Fail(why, "oneOf", v);
  }
  if (v.is_object()) {
    const json props = s.value("properties", json::object());
    for (const auto& [k, x] : v.items()) {
      if (props.contains(k)) {
        if (!Valid(x, props[k], root, why)) return Fail(why, "property " + k, v);
      } else if (s.contains("additionalProperties") && s["additionalProperties"] == false) {
        return Fail(why, "additionalProperties", v);
      }
    }
    for (const json& r : s.value("required", json::array())) {
      if (!v.contains(r.get<std::string>())) return Fail(why, "required " + r.dump(), v);
    }
  }
  if (v.is_array()) {
    if (v.size() < s.value("minItems", size_t{0}) || v.size() > s.value("maxItems", SIZE_MAX)) {
      return Fail(why, "minItems/maxItems", v);
    }
    if (s.contains("items")) {
      for (const json& x : v) {
        if (!Valid(x, s["items"], root, why)) return Fail(why, "items", v);
      }
    }
  }
  if (v.is_string()) {
    const size_t n = CodePoints(v.get<std::string>());
    if (n < s.value("minLength", size_t{0}) || n > s.value("maxLength", SIZE_MAX)) return Fail(why, "length", v);
  }
  return true;
}

inline const char* const kSchemas[] = {
    // 1. flat object
    R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer"},
        "ok":{"type":"boolean"}},"required":["name","age"],"additionalProperties":false})",
    // 2. nested objects
    R"({"type":"object","properties":{"user":{"type":"object","properties":{"id":{"type":"integer"},
        "address":{"type":"object","properties":{"city":{"type":"string","maxLength":8},
        "zip":{"type":"string","minLength":2,"maxLength":5}},"required":["city"]}},"required":["id","address"]}},
        "required":["user"]})",
    // 3. arrays with min/max items
    R"({"type":"object","properties":{"tags":{"type":"array","items":{"type":"string","maxLength":6},"minItems":1,
        "maxItems":3},"scores":{"type":"array","items":{"type":"number"},"minItems":2,"maxItems":4}},
        "required":["tags","scores"]})",
    // 4. enum
    R"({"type":"object","properties":{"color":{"enum":["red","green","blue","green-ish"]},
        "size":{"type":"string","enum":["S","M","L","XL"]},"n":{"enum":[1,12,123,null,true,[1,2]]}},
        "required":["color","size","n"]})",
    // 5. const
    R"({"type":"object","properties":{"version":{"const":"v1"},"meta":{"const":{"a":[1,2,{"b":null}],"c":"d\"é"}},
        "pi":{"const":3.5}},"required":["version","meta","pi"]})",
    // 6. anyOf, with branches sharing a prefix
    R"({"type":"object","properties":{"value":{"anyOf":[{"type":"string","maxLength":5},{"type":"integer"},
        {"type":"object","properties":{"x":{"type":"number"}},"required":["x"]},
        {"type":"object","properties":{"x":{"type":"string","maxLength":3},"y":{"type":"null"}},
        "required":["x","y"]}]}},
        "required":["value"]})",
    // 7. integer, number, boolean, null, a list of types
    R"({"type":"object","properties":{"i":{"type":"integer"},"n":{"type":"number"},"b":{"type":"boolean"},
        "z":{"type":"null"},"either":{"type":["integer","null"]}},"required":["i","n","b","z","either"]})",
    // 8. $ref/$defs, recursive
    R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
        "kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":1}},"required":["v"]},
        "leaf":{"type":"string","maxLength":4}},
        "type":"object","properties":{"root":{"$ref":"#/$defs/node"},"label":{"$ref":"#/$defs/leaf"}},
        "required":["root","label"]})",
    // 9. strings with maxLength
    R"({"type":"object","properties":{"a":{"type":"string","maxLength":1},"b":{"type":"string","minLength":3,
        "maxLength":10},"c":{"type":"string","maxLength":0}},"required":["a","b","c"]})",
    // 10. a top-level array of oneOf
    R"({"type":"array","items":{"oneOf":[{"type":"string","maxLength":4},{"type":"object",
        "properties":{"k":{"type":"boolean"}},"required":["k"]}]},"minItems":1,"maxItems":5})",
};

}  // namespace gemma::structured::testing
