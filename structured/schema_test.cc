// Schemas outside the supported subset, and malformed ones, are clear InvalidArgument errors.
#include <chrono>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "structured/grammar.h"
#include "structured/test_support.h"

namespace gemma::structured {
namespace {

using nlohmann::json;

absl::Status Compile(const std::string& schema) {
  auto vocab = Vocabulary::FromTokenBytes({std::nullopt, "{", "}"});
  return Grammar::FromJsonSchema(json::parse(schema), vocab, {0}).status();
}

void ExpectRejected(const std::string& schema, const std::vector<std::string>& parts) {
  const absl::Status s = Compile(schema);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << schema << " -> " << s;
  for (const std::string& part : parts) EXPECT_NE(s.message().find(part), std::string::npos) << s << " lacks " << part;
}

TEST(SchemaTest, UnsupportedKeywordsAreNamedWithTheirPointer) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"pattern", R"("^a+$")"},      {"format", R"("date-time")"}, {"minimum", "0"},
      {"maximum", "10"},             {"multipleOf", "2"},          {"patternProperties", R"({"^x":{}})"},
      {"allOf", R"([{}])"},          {"not", "{}"},                {"if", "{}"},
      {"uniqueItems", "true"},       {"exclusiveMinimum", "0"},    {"prefixItems", "[{}]"},
      {"contains", "{}"},            {"propertyNames", "{}"},      {"dependentRequired", "{}"},
      {"minProperties", "1"},        {"unevaluatedProperties", "false"}};
  for (const auto& [keyword, value] : cases) {
    const std::string schema = R"({"type":"object","properties":{"name":{"type":"string",")" + keyword +
                               "\":" + value + "}}}";
    ExpectRejected(schema, {"response_format.json_schema.schema/properties/name: keyword '" + keyword +
                            "' is not supported; supported: "});
  }
  ExpectRejected(R"({"type":"object","additionalProperties":{"type":"string"}})",
                 {"schema/additionalProperties", "only false"});
  ExpectRejected(R"({"type":"array","items":[{"type":"string"}]})", {"schema/items", "tuple"});
  ExpectRejected(R"({"pattern":"x"})", {"response_format.json_schema.schema: keyword 'pattern'"});
  ExpectRejected(R"({"anyOf":[{"type":"string"}],"pattern":"x"})", {"'pattern'"});
  ExpectRejected(R"({"anyOf":[{"type":"string"}],"type":"string"})", {"'type' beside 'anyOf'"});
}

TEST(SchemaTest, MalformedSchemasAreClearErrors) {
  ExpectRejected(R"({"type":5})", {"schema/type", "type name"});
  ExpectRejected(R"({"type":[]})", {"schema/type"});
  ExpectRejected(R"({"type":"str"})", {"schema/type", "unknown type 'str'"});
  ExpectRejected(R"({"type":"object","properties":{"a":{}},"required":["b"]})", {"schema/required", "'b'"});
  ExpectRejected(R"({"type":"object","required":"a"})", {"schema/required"});
  ExpectRejected(R"({"type":"array","minItems":3,"maxItems":2})", {"schema/minItems", "above maxItems"});
  ExpectRejected(R"({"type":"string","minLength":3,"maxLength":2})", {"schema/minLength"});
  ExpectRejected(R"({"type":"string","maxLength":-1})", {"schema/maxLength", "non-negative"});
  ExpectRejected(R"({"type":"array","minItems":"2"})", {"schema/minItems"});
  ExpectRejected(R"({"$ref":"#/$defs/missing"})", {"schema/$ref", "points nowhere"});
  ExpectRejected(R"({"$ref":"http://example.com/s.json"})", {"schema/$ref"});
  ExpectRejected(R"({"$ref":5})", {"schema/$ref"});
  ExpectRejected(R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})", {"cycle"});
  ExpectRejected(R"({"$ref":"#"})", {"cycle"});
  ExpectRejected(R"({"enum":[]})", {"schema/enum"});
  ExpectRejected(R"({"anyOf":[]})", {"schema/anyOf"});
  ExpectRejected(R"({"anyOf":{}})", {"schema/anyOf"});
  ExpectRejected(R"({"type":"object","properties":{"a":42}})", {"schema/properties/a", "schema must be"});
  ExpectRejected(R"({"type":"object","properties":[]})", {"schema/properties"});
  ExpectRejected(R"({"type":"object","properties":{"a":false}})", {"schema/properties/a"});
  ExpectRejected(R"({"const":1,"enum":[2]})", {"schema/const"});
  ExpectRejected(R"({"$defs":[]})", {"schema/$defs"});
  ExpectRejected(R"("string")", {"schema must be"});
  ExpectRejected(R"({"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]})",
                 {"schema/oneOf", "'oneOf'", "branches 0 and 1"});
  ExpectRejected(R"({"oneOf":[{"type":"integer"},{"enum":[1,"a"]}]})", {"schema/oneOf"});
  json bad_utf8 = json::object();  // built in code: a parser would have refused it
  bad_utf8["enum"] = json::array({std::string("\xff")});
  EXPECT_EQ(Grammar::FromJsonSchema(bad_utf8, Vocabulary::FromTokenBytes({"a"}), {0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  json many = {{"type", "object"}, {"properties", json::object()}};
  for (int i = 0; i < 65; ++i) many["properties"]["p" + std::to_string(i)] = {{"type", "null"}};
  ExpectRejected(many.dump(), {"at most 64"});
}

TEST(SchemaTest, SupportedSchemasCompile) {
  for (const char* s : {
           R"({})", R"(true)", R"({"type":["string","null"],"title":"x","description":"y","default":null})",
           R"({"$schema":"https://json-schema.org/draft/2020-12/schema","$id":"x","type":"object",
               "properties":{"a":{"$ref":"#/definitions/d"}},"definitions":{"d":{"const":{"k":[1,2]}}},
               "additionalProperties":true})",
           R"({"oneOf":[{"type":"string"},{"type":"integer"},{"type":"object"},{"enum":[true]}]})",
           R"({"oneOf":[{"enum":["a","b"]},{"const":"c"}]})",
           R"({"$defs":{"list":{"anyOf":[{"type":"null"},
               {"type":"object","properties":{"next":{"$ref":"#/$defs/list"}}}]}},
               "$ref":"#/$defs/list"})",
           R"({"properties":{"a/b~c":{"type":"string","examples":["x"],"$comment":"c"}},"additionalProperties":false})",
       }) {
    EXPECT_TRUE(Compile(s).ok()) << s << " -> " << Compile(s);
  }
}

}  // namespace
}  // namespace gemma::structured

namespace gemma::structured {
namespace {

// Refs make a DAG whose paths can be exponentially many: 28 levels of anyOf over the level below, twice (2^28
// paths), compile and match at once; nesting past the depth cap and schemas past the node cap are refused, never a
// stack overflow or a hang.
TEST(SchemaTest, PathologicalSchemasAreFastOrRefused) {
  json defs = json::object();
  defs["d0"] = {{"type", "integer"}};
  for (int i = 1; i <= 28; ++i) {
    const std::string below = "#/$defs/d" + std::to_string(i - 1);
    defs["d" + std::to_string(i)] = {{"anyOf", {{{"$ref", below}}, {{"$ref", below}}}}};
  }
  const json dag = {{"$defs", defs}, {"$ref", "#/$defs/d28"}};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(Compile(dag.dump()).ok()) << Compile(dag.dump());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));

  json deep = {{"type", "integer"}};
  for (int i = 0; i < 70; ++i) deep = {{"type", "array"}, {"items", deep}};
  const absl::Status too_deep = Compile(deep.dump());
  EXPECT_FALSE(too_deep.ok());
  EXPECT_NE(too_deep.message().find("nests deeper"), std::string::npos) << too_deep;

  json many = json::array();
  for (int i = 0; i < 5000; ++i) many.push_back({{"const", i}});
  const absl::Status too_big = Compile(json{{"anyOf", many}}.dump());
  EXPECT_FALSE(too_big.ok());
  EXPECT_NE(too_big.message().find("nodes"), std::string::npos) << too_big;
}

}  // namespace
}  // namespace gemma::structured
