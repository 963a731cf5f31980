// JSON Schema (the supported subset) -> CompiledGrammar. Internal to the library; see grammar.h for the subset.
#pragma once

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "structured/grammar_nodes.h"

namespace gemma::structured {

// Where error messages say the schema sits in a request.
inline constexpr char kSchemaPath[] = "response_format.json_schema.schema";

// InvalidArgument naming the keyword and its JSON pointer for anything outside the subset or malformed.
absl::StatusOr<CompiledGrammar> CompileJsonSchema(const nlohmann::json& schema);
// Any JSON object at the top level, any values inside.
CompiledGrammar CompileAnyJsonObject();

}  // namespace gemma::structured
