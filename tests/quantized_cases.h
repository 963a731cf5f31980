// The quantized-weights cases the CPU and CUDA suites share: every tiny model (Gemma 1, 2 and 3) in int8, int4 and
// fp8, at one rank and at two ranks, and the test names they take.
#pragma once

#include <cctype>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shard/model/quantize.h"
#include "tests/reference_helpers.h"

namespace gemma::testing {

struct QuantCase {
  TinyModel model;
  WeightPrecision precision;
  int world;
  int group = 128;  // int4; groups of 32 at TP 2, where tiny models' slices would cut larger ones
};

inline void PrintTo(const QuantCase& c, std::ostream* os) {
  *os << c.model.name << " " << WeightPrecisionName(c.precision) << " tp" << c.world;
}

inline std::vector<QuantCase> QuantCases() {
  std::vector<QuantCase> out;
  for (const auto* models : {&TinyModels(), &Gemma23TinyModels()}) {
    for (const auto& m : *models) {
      for (WeightPrecision p : {WeightPrecision::kInt8, WeightPrecision::kInt4, WeightPrecision::kFp8}) {
        out.push_back({m, p, 1});
        out.push_back({m, p, 2, 32});
      }
    }
  }
  return out;
}

// "tiny_mha_int8_tp1".
inline std::string QuantCaseName(const ::testing::TestParamInfo<QuantCase>& info) {
  std::string n = absl::StrCat(info.param.model.name, "_", WeightPrecisionName(info.param.precision), "_tp",
                               info.param.world);
  for (char& ch : n) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return n;
}

}  // namespace gemma::testing
