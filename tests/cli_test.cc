// The gemma command as a user runs it: outputs against the reference, and one-line errors for bad input.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testdata.h"

namespace gemma::testing {
namespace {

struct CliRun {
  int code;
  std::string out, err;
};

CliRun Gemma(const std::string& args, const std::string& stdin_text = "") {
  // Unique names: ctest runs tests of this binary in parallel processes.
  static int calls = 0;
  const std::string dir = ::testing::TempDir();
  const std::string tag = std::to_string(::getpid()) + "_" + std::to_string(calls++);
  const std::string in = dir + "/cli_in" + tag, out = dir + "/cli_out" + tag, err = dir + "/cli_err" + tag;
  std::ofstream(in, std::ios::binary) << stdin_text;
  const std::string cmd = std::string("GEMMA_CACHE_DIR=") + dir + "/cache" + tag + " " + GEMMA_BINARY + " " + args + " <" + in +
                          " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFile(out), ReadFile(err)};
}

std::string Tiny(const std::string& m) { return GemmaTinyDir() + "/" + m; }

TEST(CliTest, GenerateJsonMatchesReferenceGreedy) {
  const auto ref = nlohmann::json::parse(ReadFile(GemmaTinyDir() + "/reference/tiny-mqa/generations.json"));
  const auto& g = ref["results"][3];  // sentence150
  std::string ids;
  for (int id : g["prompt_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  CliRun r = Gemma("generate --model " + Tiny("tiny-mqa") + " --prompt-ids " + ids + " --max-new-tokens 32 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  EXPECT_EQ(out["prompt_ids"], g["prompt_ids"]);
  const auto got = out["token_ids"].get<std::vector<int>>();
  const auto want = g["generated_ids"].get<std::vector<int>>();
  const size_t compare = g["first_step_with_margin_below_1e-3"].is_null() ? 32 : g["first_step_with_margin_below_1e-3"].get<size_t>();
  ASSERT_EQ(got.size(), 32u);
  EXPECT_TRUE(std::equal(want.begin(), want.begin() + compare, got.begin()));
  EXPECT_EQ(out["finish_reason"], "length");
  EXPECT_TRUE(out["text"].is_string());
}

TEST(CliTest, GeneratePromptTextPrependsBos) {
  CliRun r = Gemma("generate --model " + Tiny("tiny-mha") + " --prompt Hello --max-new-tokens 4 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["prompt_ids"], nlohmann::json({2, 3791, 323}));
}

TEST(CliTest, SeededSamplingIsReproducible) {
  const std::string args = "generate --model " + Tiny("tiny-mha") +
                           " --prompt Hello --max-new-tokens 16 --temperature 1.5 --top-k 50 --top-p 0.9 --seed 7 --json";
  CliRun a = Gemma(args), b = Gemma(args);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["token_ids"], nlohmann::json::parse(b.out)["token_ids"]);
}

TEST(CliTest, ScoreMatchesReference) {
  const auto ref = nlohmann::json::parse(ReadFile(GemmaTinyDir() + "/reference/tiny-mha/scores.json"));
  CliRun r = Gemma("score --model " + Tiny("tiny-mha") + " --prompt 'The quick brown fox jumps over the lazy dog.' --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  EXPECT_EQ(out["token_ids"], ref["prompts"][0]["ids"]);
  const auto got = out["logprobs"].get<std::vector<double>>();
  const auto want = ref["prompts"][0]["token_logprobs"].get<std::vector<double>>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4);
}

TEST(CliTest, TokenizeReadsStdinExactly) {
  CliRun r = Gemma("tokenize --tokenizer " + GemmaTinyDir() + "/tokenizer.model --json", "Hello\n");
  ASSERT_EQ(r.code, 0) << r.err;
  // "Hello" then the newline as byte piece <0x0A> (id 6 + 10): nothing is stripped.
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], nlohmann::json({3791, 323, 16}));
}

TEST(CliTest, MakeTinyWritesALoadableCheckpoint) {
  const std::string dir = ::testing::TempDir() + "/made-tiny";
  CliRun made = Gemma("make-tiny --out " + dir + " --layers 2 --seed 3");
  ASSERT_EQ(made.code, 0) << made.err;
  CliRun gen = Gemma("generate --model " + dir + " --prompt 'Hello there' --max-new-tokens 8 --json");
  ASSERT_EQ(gen.code, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out)["token_ids"].size(), 8u);
}

TEST(CliTest, DefaultModelGeneratesWithoutFlags) {
  CliRun r = Gemma("generate --prompt 'The quick brown fox' --max-new-tokens 8");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

TEST(CliTest, BadInputGivesOneLineErrorAndNonZeroExit) {
  const std::string m = " --model " + Tiny("tiny-mha");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"generate" + m + " --prompt Hi --max-new-tokens -1", "--max-new-tokens"},
      {"generate" + m + " --prompt Hi --temperature -1", "--temperature"},
      {"generate" + m + " --prompt Hi --top-p 1.5", "--top-p"},
      {"generate" + m + " --prompt Hi --bogus 1", "unknown flag --bogus"},
      {"generate" + m, "exactly one of --prompt"},
      {"generate" + m + " --prompt-ids 2,99999", "--prompt-ids"},
      {"generate" + m + " --prompt-ids 2,x", "--prompt-ids"},
      {"generate --model /nonexistent/model --prompt Hi", "/nonexistent/model"},
      {"generate" + m + " --prompt Hi --max-new-tokens 600", "context"},
      {"generate" + m + " --prompt Hi --device tpu", "allowed: cpu, cuda"},
      {"score" + m + " --prompt Hi --precision f16", "allowed: bf16, f32"},
      {"make-tiny --out /tmp/x --shape 3b", "allowed: tiny, 2b, 7b, gemma2-2b, gemma2-9b, gemma2-27b, gemma3-1b, gemma3-4b, "
                                             "gemma3-12b, gemma3-27b"},
      {"frobnicate", "unknown command"},
  };
  for (const auto& [args, needle] : cases) {
    CliRun r = Gemma(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << " -> " << r.err;
  }
}

TEST(CliTest, EverySubcommandHasHelp) {
  for (const char* cmd : {"generate", "score", "tokenize", "make-tiny", "bench"}) {
    CliRun r = Gemma(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("usage: gemma"), std::string::npos) << cmd;
  }
}

}  // namespace
}  // namespace gemma::testing
