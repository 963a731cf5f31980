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

namespace {

std::string SharedDir(const std::string& name, const char* marker, const char* checks) {
  const std::string dir = TestdataRoot() + "/" + name;
  if (std::filesystem::exists(dir + "/" + marker)) return dir;
  std::fprintf(stderr,
               "\n*** %s test data is ABSENT at %s: the %s cannot run. "
               "Set GEMMA_TESTDATA to the folder that holds %s/. ***\n\n",
               name.c_str(), dir.c_str(), checks, name.c_str());
  return "";
}

}  // namespace

std::string Gemma2TinyDir() { return SharedDir("gemma2-tiny", "README.md", "Gemma 2 reference checks"); }
std::string Gemma3TinyDir() { return SharedDir("gemma3-tiny", "README.md", "Gemma 3 reference checks"); }
std::string GemmaLoraTinyDir() { return SharedDir("gemma-lora-tiny", "README.md", "LoRA adapter reference checks"); }
std::string GemmaActivationsTinyDir() {
  return SharedDir("gemma-activations-tiny", "index.json",
                   "activation and intervention reference checks");
}
std::string Gemma3TokenizerDir() {
  return SharedDir("gemma3-tokenizer", "tokenizer.model", "Gemma 3 tokenizer checks");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace gemma::testing
