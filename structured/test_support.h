// Shared by the structured-output tests: the tiny test tokenizer's vocabulary.
#pragma once

#include <memory>

#include "gtest/gtest.h"
#include "structured/vocabulary.h"
#include "tests/testdata.h"
#include "tokenizer/tokenizer.h"

namespace gemma::structured::testing {

// gemma-tiny's tokenizer: 4,096 pieces with byte fallback; <eos> is 1, <end_of_turn> 5.
inline std::shared_ptr<const Vocabulary> TinyVocabulary() {
  static const std::shared_ptr<const Vocabulary> vocab = [] {
    auto tok = Tokenizer::FromFile(gemma::testing::GemmaTinyDir() + "/tokenizer.model");
    if (!tok.ok()) {
      ADD_FAILURE() << "the tiny tokenizer is missing (set GEMMA_TESTDATA): " << tok.status();
      return std::shared_ptr<const Vocabulary>();
    }
    auto v = Vocabulary::FromTokenizer(**tok);
    if (!v.ok()) {
      ADD_FAILURE() << v.status();
      return std::shared_ptr<const Vocabulary>();
    }
    return *v;
  }();
  return vocab;
}

inline constexpr int32_t kTinyEos = 1;
inline constexpr int32_t kTinyEndOfTurn = 5;

}  // namespace gemma::structured::testing
