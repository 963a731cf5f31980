#include "structured/schema_compiler.h"

#include <algorithm>
#include <bitset>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "engine/status_macros.h"

namespace gemma::structured {
namespace {

using nlohmann::json;

constexpr char kSupported[] =
    "type, properties, required, additionalProperties (false; absent or true is treated as false), enum, const, "
    "items, minItems, maxItems, minLength, maxLength, anyOf, oneOf (branches that cannot match the same value), "
    "$ref (#, #/$defs/NAME, #/definitions/NAME), $defs, definitions";

const std::set<std::string>& Annotations() {
  static const auto* s = new std::set<std::string>{"title", "description", "$schema", "$id", "default", "examples",
                                                   "$comment", "deprecated", "readOnly", "writeOnly"};
  return *s;
}

const std::set<std::string>& Supported() {
  static const auto* s = new std::set<std::string>{
      "type",     "properties", "required",  "additionalProperties", "enum",  "const",  "items", "minItems",
      "maxItems", "minLength",  "maxLength", "anyOf",                "oneOf", "$ref", "$defs", "definitions"};
  return *s;
}

std::string EscapePointerToken(const std::string& s) {
  return absl::StrReplaceAll(s, {{"~", "~0"}, {"/", "~1"}});
}

absl::Status Invalid(const std::string& pointer, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(kSchemaPath, pointer, ": ", what));
}

class Compiler {
 public:
  explicit Compiler(const json& root) : root_(root) {}

  absl::StatusOr<CompiledGrammar> Run() {
    ASSIGN_OR_RETURN(const int32_t root, Compile(root_, ""));
    return Finish(root);
  }

  absl::StatusOr<CompiledGrammar> Finish(int32_t root) {
    // Every later pass (cycle check, the matcher's expansion of anyOf) is at worst quadratic in the nodes: a schema
    // is refused before it could make them slow.
    if (nodes_.size() > kMaxNodes) {
      return Invalid("", absl::StrCat("the schema compiles to ", nodes_.size(), " nodes; allowed: at most ", kMaxNodes,
                                      " (fewer properties, definitions or alternatives)"));
    }
    RETURN_IF_ERROR(CheckAliasCycles());
    for (const auto& [node, pointer] : one_ofs_) RETURN_IF_ERROR(CheckDisjoint(node, pointer));
    CompiledGrammar g;
    g.nodes = std::move(nodes_);
    g.root = root;
    return g;
  }

  // Any JSON value; built once per grammar.
  int32_t AnyValue() {
    if (any_value_ >= 0) return any_value_;
    any_value_ = Add(GrammarNode{});
    GrammarNode object{.kind = NodeKind::kObject, .any_keys = true, .values = {any_value_}};
    GrammarNode array{.kind = NodeKind::kArray, .items = any_value_};
    GrammarNode string{.kind = NodeKind::kString};
    GrammarNode number{.kind = NodeKind::kNumber};
    GrammarNode literals{.kind = NodeKind::kLiteral, .literals = {"true", "false", "null"}};
    std::vector<int32_t> branches = {Add(object), Add(array), Add(string), Add(number), Add(literals)};
    nodes_[any_value_].branches = std::move(branches);
    return any_value_;
  }

  int32_t AnyObject() { return Add(GrammarNode{.kind = NodeKind::kObject, .any_keys = true, .values = {AnyValue()}}); }

 private:
  int32_t Add(GrammarNode node) {
    nodes_.push_back(std::move(node));
    return static_cast<int32_t>(nodes_.size() - 1);
  }

  absl::StatusOr<int32_t> Compile(const json& s, const std::string& ptr) {
    // Each nesting level is a frame of this recursion: a schema nested past any real one's depth is refused before
    // it could exhaust the stack.
    if (++depth_ > kMaxSchemaDepth) {
      --depth_;
      return Invalid(ptr.substr(0, 200), absl::StrCat("the schema nests deeper than ", kMaxSchemaDepth, " levels"));
    }
    auto compiled = CompileNode(s, ptr);
    --depth_;
    return compiled;
  }

  static constexpr int kMaxSchemaDepth = 64;
  static constexpr size_t kMaxNodes = 4096;
  int depth_ = 0;

  absl::StatusOr<int32_t> CompileNode(const json& s, const std::string& ptr) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return AnyValue();
      return Invalid(ptr, "the schema false accepts no value");
    }
    if (!s.is_object()) return Invalid(ptr, "a schema must be a JSON object or a boolean");
    for (const auto& [key, value] : s.items()) {
      if (Annotations().count(key) || Supported().count(key)) continue;
      return Invalid(ptr, absl::StrCat("keyword '", key, "' is not supported; supported: ", kSupported));
    }
    for (const char* defs : {"$defs", "definitions"}) {
      if (s.contains(defs) && !s[defs].is_object()) return Invalid(ptr + "/" + defs, "must be an object of schemas");
    }
    auto only = [&](const char* keyword) -> absl::Status {
      for (const auto& [key, value] : s.items()) {
        if (key == keyword || Annotations().count(key) || key == "$defs" || key == "definitions") continue;
        return Invalid(ptr, absl::StrCat("keyword '", key, "' beside '", keyword, "' is not supported"));
      }
      return absl::OkStatus();
    };
    if (s.contains("$ref")) {
      RETURN_IF_ERROR(only("$ref"));
      return Ref(s["$ref"], ptr + "/$ref");
    }
    for (const char* keyword : {"anyOf", "oneOf"}) {
      if (!s.contains(keyword)) continue;
      RETURN_IF_ERROR(only(keyword));
      const json& list = s[keyword];
      const std::string p = ptr + "/" + keyword;
      if (!list.is_array() || list.empty()) return Invalid(p, "must be a non-empty list of schemas");
      GrammarNode node{.kind = NodeKind::kAnyOf};
      for (size_t i = 0; i < list.size(); ++i) {
        ASSIGN_OR_RETURN(const int32_t branch, Compile(list[i], absl::StrCat(p, "/", i)));
        node.branches.push_back(branch);
      }
      const int32_t id = Add(std::move(node));
      if (std::string(keyword) == "oneOf") one_ofs_.emplace_back(id, p);
      return id;
    }
    if (s.contains("enum") || s.contains("const")) {
      GrammarNode node{.kind = NodeKind::kLiteral};
      if (s.contains("enum")) {
        const json& list = s["enum"];
        if (!list.is_array() || list.empty()) return Invalid(ptr + "/enum", "must be a non-empty list of values");
        for (const json& v : list) node.literals.push_back(v.dump());
      }
      if (s.contains("const")) {
        const std::string value = s["const"].dump();
        if (s.contains("enum") && std::find(node.literals.begin(), node.literals.end(), value) == node.literals.end()) {
          return Invalid(ptr + "/const", "the const value is not in the enum");
        }
        node.literals = {value};
      }
      std::sort(node.literals.begin(), node.literals.end());
      node.literals.erase(std::unique(node.literals.begin(), node.literals.end()), node.literals.end());
      return Add(std::move(node));
    }
    std::vector<std::string> types;
    if (s.contains("type")) {
      const json& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty() &&
                 std::all_of(t.begin(), t.end(), [](const json& x) { return x.is_string(); })) {
        for (const json& x : t) types.push_back(x.get<std::string>());
      } else {
        return Invalid(ptr + "/type", "must be a type name or a non-empty list of type names");
      }
    } else if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) {
      types = {"object"};
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
      types = {"array"};
    } else if (s.contains("minLength") || s.contains("maxLength")) {
      types = {"string"};
    } else {
      return AnyValue();
    }
    std::vector<int32_t> branches;
    for (const std::string& type : types) {
      ASSIGN_OR_RETURN(const int32_t id, Typed(s, ptr, type));
      branches.push_back(id);
    }
    if (branches.size() == 1) return branches[0];
    return Add(GrammarNode{.kind = NodeKind::kAnyOf, .branches = std::move(branches)});
  }

  // A non-negative integer keyword, or `fallback` when absent.
  absl::StatusOr<uint32_t> Count(const json& s, const std::string& ptr, const char* keyword, uint32_t fallback) {
    if (!s.contains(keyword)) return fallback;
    const json& v = s[keyword];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= kUnbounded) {
      return Invalid(ptr + "/" + keyword, "must be a non-negative integer");
    }
    return static_cast<uint32_t>(v.get<int64_t>());
  }

  absl::StatusOr<int32_t> Typed(const json& s, const std::string& ptr, const std::string& type) {
    if (type == "null") return Add(GrammarNode{.kind = NodeKind::kLiteral, .literals = {"null"}});
    if (type == "boolean") return Add(GrammarNode{.kind = NodeKind::kLiteral, .literals = {"false", "true"}});
    if (type == "number" || type == "integer") {
      return Add(GrammarNode{.kind = NodeKind::kNumber, .integer = type == "integer"});
    }
    if (type == "string") {
      GrammarNode node{.kind = NodeKind::kString};
      ASSIGN_OR_RETURN(node.min_length, Count(s, ptr, "minLength", 0));
      ASSIGN_OR_RETURN(node.max_length, Count(s, ptr, "maxLength", kUnbounded));
      if (node.min_length > node.max_length) return Invalid(ptr + "/minLength", "minLength is above maxLength");
      return Add(std::move(node));
    }
    if (type == "array") {
      GrammarNode node{.kind = NodeKind::kArray};
      ASSIGN_OR_RETURN(node.min_items, Count(s, ptr, "minItems", 0));
      ASSIGN_OR_RETURN(node.max_items, Count(s, ptr, "maxItems", kUnbounded));
      if (node.min_items > node.max_items) return Invalid(ptr + "/minItems", "minItems is above maxItems");
      if (s.contains("items")) {
        if (s["items"].is_array()) {
          return Invalid(ptr + "/items", "items as a list (tuple validation) is not supported");
        }
        ASSIGN_OR_RETURN(node.items, Compile(s["items"], ptr + "/items"));
      } else {
        node.items = AnyValue();
      }
      return Add(std::move(node));
    }
    if (type == "object") return Object(s, ptr);
    return Invalid(ptr + "/type", absl::StrCat("unknown type '", type,
                                               "'; types: object, array, string, number, integer, boolean, null"));
  }

  absl::StatusOr<int32_t> Object(const json& s, const std::string& ptr) {
    GrammarNode node{.kind = NodeKind::kObject};
    if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      if (!a.is_boolean() && !(a.is_object() && a.empty())) {
        return Invalid(ptr + "/additionalProperties", "only false is supported (absent or true is treated as false)");
      }
    }
    if (s.contains("properties")) {
      const json& props = s["properties"];
      if (!props.is_object()) return Invalid(ptr + "/properties", "must be an object of schemas");
      if (props.size() > kMaxProperties) {
        return Invalid(ptr + "/properties", absl::StrCat("at most ", kMaxProperties, " properties are supported"));
      }
      for (const auto& [key, value] : props.items()) {
        const std::string quoted = json(key).dump();
        node.keys.push_back(quoted.substr(1, quoted.size() - 2));
        ASSIGN_OR_RETURN(const int32_t id, Compile(value, ptr + "/properties/" + EscapePointerToken(key)));
        node.values.push_back(id);
      }
    }
    if (s.contains("required")) {
      const json& req = s["required"];
      if (!req.is_array()) return Invalid(ptr + "/required", "must be a list of property names");
      for (const json& name : req) {
        if (!name.is_string()) return Invalid(ptr + "/required", "must be a list of property names");
        const std::string quoted = json(name).dump();
        const auto it = std::find(node.keys.begin(), node.keys.end(), quoted.substr(1, quoted.size() - 2));
        if (it == node.keys.end()) {
          return Invalid(ptr + "/required", absl::StrCat("'", name.get<std::string>(), "' is not in properties"));
        }
        node.required |= uint64_t{1} << (it - node.keys.begin());
      }
    }
    return Add(std::move(node));
  }

  absl::StatusOr<int32_t> Ref(const json& ref, const std::string& ptr) {
    if (!ref.is_string()) return Invalid(ptr, "must be a string");
    const std::string target = ref.get<std::string>();
    if (auto it = refs_.find(target); it != refs_.end()) return it->second;
    const json* schema = nullptr;
    std::string schema_ptr;
    if (target == "#") {
      schema = &root_;
    } else {
      for (const char* defs : {"$defs", "definitions"}) {
        const std::string prefix = absl::StrCat("#/", defs, "/");
        if (target.rfind(prefix, 0) != 0) continue;
        const std::string name =
            absl::StrReplaceAll(target.substr(prefix.size()), {{"~1", "/"}, {"~0", "~"}});
        if (root_.contains(defs) && root_[defs].is_object() && root_[defs].contains(name)) {
          schema = &root_[defs][name];
          schema_ptr = absl::StrCat("/", defs, "/", EscapePointerToken(name));
        }
      }
    }
    if (schema == nullptr) {
      return Invalid(ptr,
                     absl::StrCat("'", target, "' points nowhere; supported: #, #/$defs/NAME, #/definitions/NAME"));
    }
    // An alias node first, so that a recursive reference finds it while its target compiles.
    const int32_t alias = Add(GrammarNode{.kind = NodeKind::kAnyOf});
    refs_[target] = alias;
    ASSIGN_OR_RETURN(const int32_t id, Compile(*schema, schema_ptr));
    nodes_[alias].branches = {id};
    return alias;
  }

  // anyOf edges consume no byte, so a cycle of them ({"$ref": "#"} at the root, or two defs naming each other)
  // would expand forever.
  absl::Status CheckAliasCycles() {
    std::vector<int> color(nodes_.size(), 0);
    std::function<bool(int32_t)> cyclic = [&](int32_t n) {
      if (color[n] == 1) return true;
      if (color[n] == 2) return false;
      color[n] = 1;
      if (nodes_[n].kind == NodeKind::kAnyOf) {
        for (int32_t b : nodes_[n].branches) {
          if (cyclic(b)) return true;
        }
      }
      color[n] = 2;
      return false;
    };
    for (size_t n = 0; n < nodes_.size(); ++n) {
      if (cyclic(static_cast<int32_t>(n))) return Invalid("", "a $ref or anyOf cycle that never reaches a type");
    }
    return absl::OkStatus();
  }

  // The non-anyOf nodes reachable from `n` through anyOf edges (each node expanded once: refs can make a DAG whose
  // paths are exponentially many).
  void Leaves(int32_t n, std::set<int32_t>* out, std::set<int32_t>* expanded = nullptr) {
    std::set<int32_t> local;
    if (expanded == nullptr) expanded = &local;
    if (nodes_[n].kind != NodeKind::kAnyOf) {
      out->insert(n);
      return;
    }
    if (!expanded->insert(n).second) return;
    for (int32_t b : nodes_[n].branches) Leaves(b, out, expanded);
  }

  // The first bytes of the values a leaf node accepts, and (for literals) the values themselves.
  std::bitset<256> FirstBytes(int32_t n) {
    std::bitset<256> bytes;
    const GrammarNode& node = nodes_[n];
    switch (node.kind) {
      case NodeKind::kObject: bytes.set('{'); break;
      case NodeKind::kArray: bytes.set('['); break;
      case NodeKind::kString: bytes.set('"'); break;
      case NodeKind::kNumber:
        bytes.set('-');
        for (char c = '0'; c <= '9'; ++c) bytes.set(static_cast<unsigned char>(c));
        break;
      case NodeKind::kLiteral:
        for (const std::string& l : node.literals) bytes.set(static_cast<unsigned char>(l[0]));
        break;
      case NodeKind::kAnyOf: break;
    }
    return bytes;
  }

  // oneOf is anyOf when no value can match two branches. Sufficient check: the branches' first bytes are
  // disjoint, except that two branches of literals only may share first bytes when no literal is in both.
  absl::Status CheckDisjoint(int32_t one_of, const std::string& ptr) {
    const auto& branches = nodes_[one_of].branches;
    for (size_t i = 0; i < branches.size(); ++i) {
      for (size_t j = i + 1; j < branches.size(); ++j) {
        std::set<int32_t> a, b;
        Leaves(branches[i], &a);
        Leaves(branches[j], &b);
        for (int32_t x : a) {
          for (int32_t y : b) {
            const GrammarNode &nx = nodes_[x], &ny = nodes_[y];
            bool overlap;
            if (nx.kind == NodeKind::kLiteral && ny.kind == NodeKind::kLiteral) {
              overlap = std::any_of(nx.literals.begin(), nx.literals.end(), [&](const std::string& l) {
                return std::find(ny.literals.begin(), ny.literals.end(), l) != ny.literals.end();
              });
            } else if (nx.kind == NodeKind::kLiteral || ny.kind == NodeKind::kLiteral) {
              overlap = (FirstBytes(x) & FirstBytes(y)).any();  // a literal may be a value of the other type
            } else {
              overlap = (FirstBytes(x) & FirstBytes(y)).any();
            }
            if (overlap) {
              return Invalid(ptr, absl::StrCat("keyword 'oneOf' is supported only when its branches cannot match the "
                                               "same value (here branches ", i, " and ", j,
                                               " may); use anyOf; supported: ", kSupported));
            }
          }
        }
      }
    }
    return absl::OkStatus();
  }

  const json& root_;
  std::vector<GrammarNode> nodes_;
  std::map<std::string, int32_t> refs_;
  std::vector<std::pair<int32_t, std::string>> one_ofs_;
  int32_t any_value_ = -1;
};

}  // namespace

absl::StatusOr<CompiledGrammar> CompileJsonSchema(const nlohmann::json& schema) {
  // nlohmann::json throws (e.g. dumping a string that is not UTF-8 in a value built in code); no exception
  // leaves the library.
  try {
    return Compiler(schema).Run();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(kSchemaPath, ": ", e.what()));
  }
}

CompiledGrammar CompileAnyJsonObject() {
  const json empty = json::object();
  Compiler compiler(empty);
  const int32_t root = compiler.AnyObject();
  return *compiler.Finish(root);  // no cycles, no oneOf: cannot fail
}

}  // namespace gemma::structured
