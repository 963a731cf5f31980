// The gemma command as a user runs it: outputs against the reference, and one-line errors for bad input.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

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

// --activations bf16 either rounds (the scores move a little) or, where this CPU's dot products are missing or
// slower than its f32 FMAs, says so and runs the exact kernel (the scores are f32's, bit for bit).
TEST(CliTest, Bf16ActivationsRoundOrSayWhyTheyDoNot) {
  const std::string score = "score --model " + Tiny("tiny-mha") + " --prompt 'The quick brown fox jumps over.' --json";
  CliRun exact = Gemma(score);
  CliRun bf16 = Gemma(score + " --activations bf16");
  ASSERT_EQ(exact.code, 0) << exact.err;
  ASSERT_EQ(bf16.code, 0) << bf16.err;
  const auto want = nlohmann::json::parse(exact.out)["logprobs"].get<std::vector<double>>();
  const auto got = nlohmann::json::parse(bf16.out)["logprobs"].get<std::vector<double>>();
  ASSERT_EQ(got.size(), want.size());
  if (bf16.err.find("the f32 kernel runs") != std::string::npos) {
    EXPECT_EQ(got, want) << "the fallback is the exact kernel";
  } else {
    EXPECT_NE(got, want) << "bf16 activations were not rounded, and nothing said so: " << bf16.err;
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.01);
  }
}

// The largest |got - want| of any row, relative to that row's L2 norm in `want`
// (gemma-activations-tiny's README).
double MaxRowRelativeDiff(const nlohmann::json& rows,
                          const std::string& f32_file) {
  const std::string bytes = ReadFile(f32_file);
  std::vector<float> want(bytes.size() / 4);
  std::memcpy(want.data(), bytes.data(), bytes.size());
  const size_t width = rows.empty() ? 1 : rows[0].size();
  EXPECT_EQ(rows.size() * width, want.size()) << f32_file;
  double worst = 0;
  for (size_t r = 0; r < rows.size() && (r + 1) * width <= want.size(); ++r) {
    double norm = 0, diff = 0;
    for (size_t i = 0; i < width; ++i) {
      const double w = want[r * width + i];
      norm += w * w;
      diff = std::max(diff, std::abs(rows[r][i].get<double>() - w));
    }
    worst = std::max(worst, diff / std::sqrt(norm));
  }
  return worst;
}

std::string ActivationsData() {
  const std::string dir = GemmaActivationsTinyDir();
  EXPECT_FALSE(dir.empty()) << "gemma-activations-tiny is absent: the "
                               "hidden-state and steering checks cannot run";
  return dir;
}

const char* const kFox =
    " --prompt 'The quick brown fox jumps over the lazy dog.'";

TEST(CliTest, ScoreLogitsAreTheReferenceLogits) {
  const std::string ref = GemmaTinyDir() + "/reference/tiny-mqa/logits_fox";
  const auto side = nlohmann::json::parse(ReadFile(ref + ".json"));
  const std::string bin = ReadFile(ref + ".f32.bin");
  std::vector<float> want(bin.size() / sizeof(float));
  std::memcpy(want.data(), bin.data(), bin.size());
  std::string ids;
  for (int id : side["ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string m = "score --model " + Tiny("tiny-mqa") + " --prompt-ids " + ids + " --json";
  CliRun all = Gemma(m + " --logits all");
  CliRun top = Gemma(m + " --logits 3");
  ASSERT_EQ(all.code, 0) << all.err;
  ASSERT_EQ(top.code, 0) << top.err;
  const auto rows = nlohmann::json::parse(all.out)["logits"];
  const auto largest = nlohmann::json::parse(top.out)["top_logits"];
  const size_t n = side["ids"].size() - 1;
  ASSERT_EQ(rows.size(), n);
  ASSERT_EQ(largest.size(), n);
  for (size_t p = 0; p < n; ++p) {
    ASSERT_EQ(rows[p].size(), 4096u);
    for (size_t v = 0; v < 4096; v += 97) EXPECT_NEAR(rows[p][v].get<double>(), want[p * 4096 + v], 1e-4) << p;
    EXPECT_EQ(largest[p][0][0].get<int>(), side["argmax"][p].get<int>()) << p;
    EXPECT_NEAR(largest[p][0][1].get<double>(), side["max_logit"][p].get<double>(), 1e-4) << p;
  }
  CliRun bad = Gemma(m + " --logits 0");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("--logits \"0\" is invalid; allowed: an integer in [1, 256], or all"), std::string::npos) << bad.err;
}

TEST(CliTest, ScoreHiddenStatesAreHuggingFacesHiddenStates) {
  const std::string data = ActivationsData();
  ASSERT_FALSE(data.empty());
  CliRun r = Gemma("score --model " + Tiny("tiny-mha") + kFox +
                   " --hidden-states all --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  // tiny-mha has 2 layers: indices 0 (embedding), 1 (after layer 0), 2 (final
  // norm), each [19 positions][128].
  ASSERT_EQ(out["hidden_states"].size(), 3u);
  EXPECT_EQ(out["hidden_state_indices"], nlohmann::json({0, 1, 2}));
  const char* files[] = {"hidden_embedding", "hidden_after_layer_0",
                         "hidden_final_norm"};
  for (size_t k = 0; k < 3; ++k) {
    const auto& rows = out["hidden_states"][k];
    ASSERT_EQ(rows.size(), 19u);
    ASSERT_EQ(rows[0].size(), 128u);
    EXPECT_LT(MaxRowRelativeDiff(
                  rows, data + "/tiny-mha/fox/" + files[k] + ".f32.bin"),
              1e-4)
        << files[k];
  }
  EXPECT_EQ(out["logprobs"].size(), 18u);

  CliRun one = Gemma("score --model " + Tiny("tiny-mha") + kFox +
                     " --hidden-states 2 --json");
  ASSERT_EQ(one.code, 0) << one.err;
  const auto single = nlohmann::json::parse(one.out);
  ASSERT_EQ(single["hidden_states"].size(), 1u);
  EXPECT_EQ(single["hidden_states"][0], out["hidden_states"][2]);
  CliRun none = Gemma("score --model " + Tiny("tiny-mha") + kFox + " --json");
  ASSERT_EQ(none.code, 0) << none.err;
  EXPECT_FALSE(nlohmann::json::parse(none.out).contains("hidden_states"));
}

TEST(CliTest, SteeringChangesScoresAndGenerationsAsTheReference) {
  const std::string data = ActivationsData();
  ASSERT_FALSE(data.empty());
  const std::string steer = " --steer 0:" + data + "/steering_vector.f32.bin";
  CliRun plain = Gemma("score --model " + Tiny("tiny-mha") + kFox + " --json");
  CliRun steered = Gemma("score --model " + Tiny("tiny-mha") + kFox + steer +
                         " --hidden-states 1 --json");
  ASSERT_EQ(plain.code, 0) << plain.err;
  ASSERT_EQ(steered.code, 0) << steered.err;
  const auto got = nlohmann::json::parse(steered.out);
  EXPECT_NE(got["logprobs"], nlohmann::json::parse(plain.out)["logprobs"]);
  const auto scores = nlohmann::json::parse(
      ReadFile(data + "/tiny-mha/interventions/scores.json"));
  bool found = false;
  for (const auto& p : scores["prompts"]) {
    if (p["intervention"] != "steer_layer0" || p["prompt"] != "fox") continue;
    found = true;
    const auto want = p["token_logprobs"].get<std::vector<double>>();
    ASSERT_EQ(got["logprobs"].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got["logprobs"][i].get<double>(), want[i], 1e-4) << i;
  }
  EXPECT_TRUE(found);
  // The stream after layer 0 is the steered one.
  EXPECT_LT(
      MaxRowRelativeDiff(got["hidden_states"][0],
                         data + "/tiny-mha/interventions/steer_layer0/"
                                "activations_fox/hidden_after_layer_0.f32.bin"),
      1e-4);

  const auto gens = nlohmann::json::parse(
      ReadFile(data + "/tiny-mha/interventions/steer_layer0/generations.json"));
  const auto& hello = gens["results"][0];
  ASSERT_EQ(hello["prompt"], "hello");
  CliRun gen = Gemma("generate --model " + Tiny("tiny-mha") +
                     " --prompt Hello --max-new-tokens 32 --json" + steer);
  ASSERT_EQ(gen.code, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out)["token_ids"],
            hello["generated_ids"]);
}

TEST(CliTest, BadInterventionFlagsNameTheFlagValueAndWhatIsAllowed) {
  const std::string m = " --model " + Tiny("tiny-mha") + " --prompt Hi";
  const std::string short_file = ::testing::TempDir() + "/short_vector.f32";
  std::ofstream(short_file, std::ios::binary) << std::string(12, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"score" + m + " --steer 0:" + short_file,
       "--steer \"0:" + short_file +
           "\": file of 12 bytes (or unreadable); expected 512 bytes: "
           "hidden_size 128"},
      {"generate" + m + " --steer 2:" + short_file,
       "--steer \"2:" + short_file + "\": layer 2 is outside [0, 2)"},
      {"generate" + m + " --steer 0", "--steer \"0\": expected LAYER:FILE"},
      {"score" + m + " --scale-mlp 0:abc",
       "--scale-mlp \"0:abc\": the factor must be a finite number"},
      {"score" + m + " --scale-attn -1:2",
       "--scale-attn \"-1:2\": layer -1 is outside [0, 2)"},
      {"generate" + m + " --ablate-head 1:4",
       "--ablate-head \"1:4\": head \"4\" is not a query head in [0, 4)"},
      {"score" + m + " --hidden-states 3",
       "--hidden-states: \"3\" is invalid; allowed: integers in [0, 2]"},
  };
  for (const auto& [args, needle] : cases) {
    CliRun r = Gemma(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1)
        << args << " -> " << r.err;
  }
  // Repeatable: two interventions at once run.
  CliRun two =
      Gemma("score" + m +
            " --scale-mlp 0:0.5 --scale-mlp 1:2 --ablate-head 1:1 --json");
  EXPECT_EQ(two.code, 0) << two.err;
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

// Quantized weights from the command line: int8, int4 and fp8 at load, GPTQ and compressed-tensors FP8 checkpoints
// written by `gemma quantize` and served as published, and how far each moves the distributions.
TEST(CliTest, QuantizedWeightsGenerateAndWrittenCheckpointsLoad) {
  const std::string m = " --model " + Tiny("tiny-mqa");
  for (const char* weights : {"int8", "int4", "fp8"}) {
    CliRun r = Gemma("generate" + m + " --prompt-ids 2,17,99 --max-new-tokens 6 --json --weights " + weights);
    ASSERT_EQ(r.code, 0) << weights << ": " << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["token_ids"].size(), 6u);
  }
  const std::string dir = ::testing::TempDir() + "/cli-gptq";
  CliRun q = Gemma("quantize --in " + Tiny("tiny-mqa") + " --out " + dir + " --weights int4 --int4-group-size 32");
  ASSERT_EQ(q.code, 0) << q.err;
  CliRun g = Gemma("generate --model " + dir + " --prompt-ids 2,17,99 --max-new-tokens 6 --json");
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_EQ(nlohmann::json::parse(g.out)["token_ids"].size(), 6u);
  // Its 4-bit layers, as loaded (whatever --weights says), take int8 activations, and refuse bf16 ones.
  CliRun g8 = Gemma("generate --model " + dir + " --prompt-ids 2,17,99 --max-new-tokens 6 --json --activations int8");
  ASSERT_EQ(g8.code, 0) << g8.err;
  EXPECT_EQ(nlohmann::json::parse(g8.out)["token_ids"].size(), 6u);
  CliRun g16 = Gemma("generate --model " + dir + " --prompt-ids 2,17,99 --max-new-tokens 6 --activations bf16");
  EXPECT_NE(g16.code, 0);
  EXPECT_NE(g16.err.find("it needs weights bf16 or fp8, not int4"), std::string::npos) << g16.err;
  // And a compressed-tensors FP8 checkpoint (its codes and scales are checked against quantizing at load in
  // quantized_checkpoint_test).
  const std::string fp8_dir = ::testing::TempDir() + "/cli-fp8";
  CliRun q8 = Gemma("quantize --in " + Tiny("tiny-mqa") + " --out " + fp8_dir + " --weights fp8");
  ASSERT_EQ(q8.code, 0) << q8.err;
  CliRun from_file = Gemma("generate --model " + fp8_dir + " --prompt-ids 2,17,99 --max-new-tokens 6 --json");
  ASSERT_EQ(from_file.code, 0) << from_file.err;
  EXPECT_EQ(nlohmann::json::parse(from_file.out)["token_ids"].size(), 6u);
  // compare-weights needs the source checkpoint: these would be compared with themselves.
  for (const auto& [quantized, weights] : {std::pair{dir, "int4"}, {fp8_dir, "fp8"}}) {
    CliRun same = Gemma("compare-weights --model " + quantized + " --weights " + weights + " --tokens 8");
    EXPECT_NE(same.code, 0) << quantized;
    EXPECT_NE(same.err.find("compare-weights needs the bf16, f16 or f32 checkpoint they were made from"),
              std::string::npos) << same.err;
  }
  // An int8 KV cache, at TP 2 too (the follower takes the flag).
  for (const char* tp : {"1", "2"}) {
    CliRun kv = Gemma("generate" + m + " --prompt-ids 2,17,99 --max-new-tokens 6 --json --kv-cache-dtype int8 --tp " + tp);
    ASSERT_EQ(kv.code, 0) << kv.err;
    EXPECT_EQ(nlohmann::json::parse(kv.out)["token_ids"].size(), 6u);
  }
  // int4 with no group size asked for fits the slices of TP 2 (the tiny model's o_proj slices hold 64 columns); asked
  // for 128, the load names the size that fits.
  CliRun int4_tp2 = Gemma("generate" + m + " --prompt-ids 2,17,99 --max-new-tokens 6 --json --tp 2 --weights int4");
  ASSERT_EQ(int4_tp2.code, 0) << int4_tp2.err;
  EXPECT_EQ(nlohmann::json::parse(int4_tp2.out)["token_ids"].size(), 6u);
  CliRun int4_128 = Gemma("generate" + m + " --prompt-ids 2,17,99 --max-new-tokens 6 --tp 2 --weights int4 "
                          "--int4-group-size 128");
  EXPECT_NE(int4_128.code, 0);
  EXPECT_NE(int4_128.err.find("an int4 group size of 64 fits this degree"), std::string::npos) << int4_128.err;
  // A GPTQ checkpoint of groups of 128 names the group size to quantize it with for this degree.
  const std::string gptq_128 = ::testing::TempDir() + "/cli-gptq-128";
  ASSERT_EQ(Gemma("quantize --in " + Tiny("tiny-mqa") + " --out " + gptq_128 + " --weights int4").code, 0);
  CliRun packed_tp2 = Gemma("generate --model " + gptq_128 + " --prompt-ids 2,17,99 --max-new-tokens 6 --tp 2");
  EXPECT_NE(packed_tp2.code, 0);
  EXPECT_NE(packed_tp2.err.find("quantized with gemma quantize --int4-group-size 64 (or smaller, as other matrices "
                                "need) it would fit this degree"),
            std::string::npos) << packed_tp2.err;
  // Rounded activations at TP 2 too (the followers take the flags; each rank quantizes its own input slice).
  const char* const rounded[] = {" --weights int4 --int4-group-size 32 --activations int8",
                                 " --weights int8 --activations int8", " --activations bf16",
                                 " --weights fp8 --activations bf16"};
  for (const char* flags : rounded) {
    for (const char* tp : {"1", "2"}) {
      CliRun r = Gemma("generate" + m + " --prompt-ids 2,17,99 --max-new-tokens 6 --json --tp " + tp + flags);
      ASSERT_EQ(r.code, 0) << flags << " tp " << tp << ": " << r.err;
      EXPECT_EQ(nlohmann::json::parse(r.out)["token_ids"].size(), 6u) << flags << " tp " << tp;
    }
  }
  CliRun c = Gemma("compare-weights" + m + " --weights int8 --tokens 16 --json");
  ASSERT_EQ(c.code, 0) << c.err;
  const auto j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["positions"], 16);
  EXPECT_GT(j["mean_kl_vs_bf16"].get<double>(), 0.0);
  EXPECT_LT(j["mean_kl_vs_bf16"].get<double>(), 0.05);
  // With int8 activations the rounding of x adds to the weights': the same bounds hold on the tiny model.
  CliRun a = Gemma("compare-weights" + m + " --weights int8 --activations int8 --tokens 16 --json");
  ASSERT_EQ(a.code, 0) << a.err;
  const auto ja = nlohmann::json::parse(a.out);
  EXPECT_EQ(ja["activations"], "int8");
  // Without VNNI the f32 kernel runs, says so, and the figures are the weights' alone.
  if (ja["activations_run"] == "int8") {
    EXPECT_NE(ja["mean_kl_vs_bf16"].get<double>(), j["mean_kl_vs_bf16"].get<double>()) << "activations not rounded";
  } else {
    EXPECT_NE(a.err.find("the f32 kernel runs"), std::string::npos) << a.err;
    EXPECT_EQ(ja["mean_kl_vs_bf16"].get<double>(), j["mean_kl_vs_bf16"].get<double>());
  }
  EXPECT_LT(ja["mean_kl_vs_bf16"].get<double>(), 0.05);
}

TEST(CliTest, DefaultModelGeneratesWithoutFlags) {
  CliRun r = Gemma("generate --prompt 'The quick brown fox' --max-new-tokens 8");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

TEST(CliTest, GenerateWithBeamsPrintsEveryBeamBestFirstAndOneBeamIsGreedy) {
  const std::string m = "generate --model " + Tiny("tiny-mqa") + " --prompt 'The quick brown fox' --max-new-tokens 6";
  CliRun greedy = Gemma(m + " --json");
  CliRun one = Gemma(m + " --num-beams 1 --early-stopping --json");
  CliRun three = Gemma(m + " --num-beams 3 --length-penalty 0.5 --json");
  ASSERT_EQ(greedy.code, 0) << greedy.err;
  ASSERT_EQ(one.code, 0) << one.err;
  ASSERT_EQ(three.code, 0) << three.err;
  EXPECT_EQ(nlohmann::json::parse(one.out)["token_ids"], nlohmann::json::parse(greedy.out)["token_ids"]);
  const auto out = nlohmann::json::parse(three.out);
  ASSERT_EQ(out["beams"].size(), 3u);
  EXPECT_EQ(out["token_ids"], out["beams"][0]["token_ids"]);
  for (size_t i = 0; i < 3; ++i) {
    const auto& b = out["beams"][i];
    const double length = static_cast<double>(b["token_ids"].size());
    EXPECT_NEAR(b["score"].get<double>(), b["sum_logprob"].get<double>() / std::pow(length, 0.5), 1e-9);
    if (i > 0) EXPECT_GE(out["beams"][i - 1]["score"].get<double>(), b["score"].get<double>());
  }
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
      {"generate" + m + " --prompt Hi --max-new-tokens 600", "allowed: --max-new-tokens at most 509 for this prompt"},
      {"generate" + m + " --prompt Hi --device tpu", "allowed: cpu, cuda"},
      {"generate" + m + " --prompt Hi --num-beams 11", "--num-beams \"11\" is invalid; allowed: an integer in [1, 10]"},
      {"generate" + m + " --prompt Hi --num-beams 2 --top-k 3", "num_beams 2 cannot be combined with top_k"},
      {"generate" + m + " --prompt Hi --length-penalty 11", "--length-penalty"},
      {"score" + m + " --prompt Hi --precision f16", "allowed: bf16, f32"},
      {"score" + m + " --prompt Hi --precision f32", "--precision applies to --device cuda"},
      {"make-tiny --out /tmp/x --shape 3b", "allowed: tiny, 2b, 7b, gemma2-2b, gemma2-9b, gemma2-27b, gemma3-1b, gemma3-4b, "
                                             "gemma3-12b, gemma3-27b"},
      {"generate" + m + " --prompt Hi --weights int3", "allowed: bf16, int8, int4, fp8"},
      {"generate" + m + " --prompt Hi --weights int4 --int4-group-size 48", "allowed: 32, 64, 128"},
      {"generate" + m + " --prompt Hi --weights int4 --int4-group-size 256",
       "--int4-group-size 256 is invalid; allowed: 32, 64, 128 (or 0 to choose)"},
      {"client foo --server 127.0.0.1:1 --prompt Hi", "unknown call \"foo\"; allowed: generate, stream, score"},
      {"client generate --server 127.0.0.1:1 --prompt Hi --max-new-tokens 0", "--max-new-tokens \"0\" is invalid"},
      {"client generate --server 127.0.0.1:1 --prompt-ids 2,3 --chat", "--chat applies to --prompt, not --prompt-ids"},
      {"client score --server 127.0.0.1:1 --prompt Hi --temperature 7", "--temperature applies to generate and stream"},
      {"generate" + m + " --prompt Hi --int4-group-size 64", "--int4-group-size applies to --weights int4, not bf16"},
      {"generate" + m + " --prompt Hi --gpu-lora-slots 4", "--gpu-lora-slots applies to --device cuda"},
      {"generate" + m + " --prompt Hi --tp-transport tcp", "--tp-transport \"tcp\" is invalid; allowed: shm, gloo"},
      {"generate" + m + " --prompt Hi --weights int4 --int4-group-size abc",
       "--int4-group-size \"abc\" is invalid; allowed: 32, 64, 128 (or 0 to choose)"},
      {"quantize --in " + Tiny("tiny-mha") + " --out /tmp/x --weights int4 --int4-group-size 0",
       "--int4-group-size 0 is invalid; allowed: 32, 64, 128"},
      {"quantize --in " + Tiny("tiny-mha") + " --out /tmp/x --weights int4 --int4-group-size 33",
       "--int4-group-size 33 is invalid; allowed: 32, 64, 128"},
      {"quantize --in " + Tiny("tiny-mha") + " --out /tmp/x --weights int8", "allowed: int4, fp8"},
      {"quantize --in " + Gemma3TinyDir() + "/tiny-g3 --out /tmp/x --weights int4",
       "inputs in whole groups of 128; --int4-group-size 32 fits"},
      {"quantize --in " + Tiny("tiny-mha") + " --out /tmp/x --weights fp8 --format awq", "are for --weights int4"},
      {"generate" + m + " --prompt Hi --kv-cache-dtype q8", "--kv-cache-dtype \"q8\" is not a KV cache dtype; allowed: auto"},
      {"generate" + m + " --prompt Hi --kv-cache-dtype fp8", "fp8 (E4M3) is for GPUs"},
      {"generate" + m + " --prompt Hi --activations f16", "--activations \"f16\" is invalid; allowed: f32, bf16, int8"},
      {"generate" + m + " --prompt Hi --activations int8",
       "activations int8 multiplies int8 or 4-bit weights (W8A8, W4A8): it needs weights int8 or int4, not bf16"},
      {"generate" + m + " --prompt Hi --weights int8 --activations bf16",
       "activations bf16 multiplies bf16 or fp8 weights: it needs weights bf16 or fp8, not int8"},
      {"quantize --in " + Tiny("tiny-mha") + " --out /tmp/x --weights int4 --format exl2", "allowed: gptq, awq"},
      {"compare-weights" + m + " --weights bf16", "allowed: int8, int4"},
      {"compare-weights" + m + " --weights fp8 --activations int8", "it needs weights int8 or int4, not fp8"},
      {"kv-capacity --shape 3b", "allowed: tiny, 2b, 7b, gemma2-2b"},
      {"generate" + m + " --prompt Hi --length-penalty 0.5", "--length-penalty applies to beam search"},
      {"generate" + m + " --prompt Hi --early-stopping", "--early-stopping applies to beam search"},
      {"serve" + m + " --served-model-name --port 1", "--served-model-name needs a value, and --port follows it"},
      {"frobnicate", "unknown command"},
  };
  for (const auto& [args, needle] : cases) {
    CliRun r = Gemma(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << " -> " << r.err;
  }
}

// Gemma 3 27B in bf16, blocks of 16 positions: 62 layers x 16 kv heads x 128 x 2 (K, V) x 2 bytes a position
// without windows; with them, beyond the window only the 10 global layers'.
TEST(CliTest, KvCapacityCountsWhatWindowsSave) {
  CliRun r = Gemma("kv-capacity --shape gemma3-27b --kv-gib 16");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const auto& without = j["without_windows"];
  const auto& with = j["with_windows"];
  EXPECT_EQ(without["bytes_per_token"], 62 * 16 * 128 * 2 * 2);
  EXPECT_EQ(with["bytes_per_token"], 10 * 16 * 128 * 2 * 2);
  EXPECT_EQ(with["local_groups"], 6);  // 52 local layers in groups of 10
  const int64_t plain = without["budgets"][0]["longest_context"], windowed = with["budgets"][0]["longest_context"];
  EXPECT_EQ(plain, (int64_t{16} << 30) / (62 * 16 * 128 * 2 * 2) / 16 * 16);
  EXPECT_GT(windowed, 3 * plain);
  // Gemma 1 has no windows: the same either way.
  CliRun g1 = Gemma("kv-capacity --shape 2b --kv-gib 16");
  ASSERT_EQ(g1.code, 0) << g1.err;
  const auto k = nlohmann::json::parse(g1.out);
  EXPECT_EQ(k["with_windows"]["budgets"], k["without_windows"]["budgets"]);
  EXPECT_FALSE(k["with_windows"]["windowed"].get<bool>());
}

TEST(CliTest, EverySubcommandHasHelp) {
  for (const char* cmd :
       {"generate", "score", "tokenize", "make-tiny", "quantize", "compare-weights", "kv-capacity", "bench"}) {
    CliRun r = Gemma(std::string(cmd) + " --help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_NE(r.out.find("usage: gemma"), std::string::npos) << cmd;
  }
}

}  // namespace
}  // namespace gemma::testing
