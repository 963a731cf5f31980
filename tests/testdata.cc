#include "tests/testdata.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace gemma::testing {

std::string TestdataRoot() {
  if (const char* env = std::getenv("GEMMA_TESTDATA"); env && *env) return env;
  return GEMMA_DEFAULT_TESTDATA;
}

std::string GemmaTinyDir() {
  const std::string shared = TestdataRoot() + "/gemma-tiny";
  if (std::filesystem::exists(shared + "/README.md")) return shared;
  return std::string(GEMMA_BUNDLED_TESTDATA) + "/gemma-tiny";
}

std::string Gemma3TokenizerDir() {
  const std::string dir = TestdataRoot() + "/gemma3-tokenizer";
  if (std::filesystem::exists(dir + "/tokenizer.model")) return dir;
  std::fprintf(stderr,
               "\n*** gemma3-tokenizer test data is ABSENT at %s: the Gemma 3 tokenizer checks cannot run. "
               "Set GEMMA_TESTDATA to the folder that holds gemma3-tokenizer/. ***\n\n",
               dir.c_str());
  return "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace gemma::testing
