// Mask timings on the Gemma 3 vocabulary (262,144 tokens): uncached (the trie walk) and cached (a lookup), in
// a few typical states. Run by hand: build/structured/structured_mask_bench [tokenizer.model]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "structured/grammar.h"
#include "structured/matcher.h"
#include "structured/string_index.h"
#include "structured/vocabulary.h"
#include "tests/testdata.h"
#include "tokenizer/tokenizer.h"

namespace gemma::structured {
namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

int Count(const TokenBitmask& m) {
  int n = 0;
  for (uint32_t w : m) n += __builtin_popcount(w);
  return n;
}

void Bench(const char* name, const Grammar& grammar, const std::string& prefix) {
  const State state = grammar.pda().Advance(grammar.pda().Initial(), prefix);
  if (state.empty()) {
    std::printf("%-40s rejected\n", name);
    return;
  }
  std::vector<double> uncached;
  int allowed = 0;
  for (int i = 0; i < 15; ++i) {
    const auto t0 = Clock::now();
    const TokenBitmask m = grammar.ComputeMask(state);
    uncached.push_back(Micros(Clock::now() - t0));
    allowed = Count(m);
  }
  std::sort(uncached.begin(), uncached.end());
  grammar.Mask(state);  // fills the cache
  constexpr int kLookups = 20000;
  const auto t0 = Clock::now();
  size_t sink = 0;
  for (int i = 0; i < kLookups; ++i) sink += grammar.Mask(state)->size();
  const double cached = Micros(Clock::now() - t0) / kLookups;
  std::printf("%-40s %7d allowed  uncached median %8.2f ms (min %.2f)  cached %6.2f us%s\n", name, allowed,
              uncached[uncached.size() / 2] / 1000, uncached[0] / 1000, cached, sink ? "" : " ");
}

int Main(int argc, char** argv) {
  std::string path = argc > 1 ? argv[1] : "";
  if (path.empty()) {
    const std::string dir = testing::Gemma3TokenizerDir();
    if (dir.empty()) return 1;
    path = dir + "/tokenizer.model";
  }
  auto tok = Tokenizer::FromFile(path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  auto t0 = Clock::now();
  auto vocab = Vocabulary::FromTokenizer(**tok);
  if (!vocab.ok()) {
    std::fprintf(stderr, "%s\n", std::string(vocab.status().message()).c_str());
    return 1;
  }
  std::printf("vocabulary: %d tokens, %zu trie nodes, longest token %d bytes, built in %.0f ms\n", (*vocab)->size(),
              (*vocab)->trie().size(), (*vocab)->max_token_bytes(), Micros(Clock::now() - t0) / 1000);
  const std::vector<int32_t> ends = {(*tok)->eos_id(), (*tok)->end_of_turn_id()};
  const auto schema = nlohmann::json::parse(R"({"type":"object","properties":{
      "name":{"type":"string"},"age":{"type":"integer"},"score":{"type":"number"},
      "tags":{"type":"array","items":{"type":"string","maxLength":20},"maxItems":5},
      "kind":{"enum":["person","company","other"]}},"required":["name","age"]})");
  t0 = Clock::now();
  auto grammar = Grammar::FromJsonSchema(schema, *vocab, ends);
  if (!grammar.ok()) return 1;
  std::printf("schema compiled in %.3f ms; mask cache: %zu masks of %zu KiB\n", Micros(Clock::now() - t0) / 1000,
              (*grammar)->cache_capacity(), static_cast<size_t>((*vocab)->size() / 8 / 1024));
  t0 = Clock::now();
  const StringIndex& strings = (*vocab)->string_index();
  std::printf("string index (once per vocabulary, on first use): %.0f ms, %zu closing-quote nodes, %zu masks\n",
              Micros(Clock::now() - t0) / 1000, strings.closes.size(), strings.within.size());
  auto object = Grammar::AnyJsonObject(*vocab, ends);
  Bench("schema: after '{'", **grammar, "{");
  Bench("schema: inside a string", **grammar, R"({"name":"ab)");
  Bench("schema: inside a string (maxLength 20)", **grammar, R"({"name":"x","age":1,"tags":["ab)");
  Bench("schema: inside a number", **grammar, R"({"age":12)");
  Bench("schema: inside a key", **grammar, R"({"na)");
  Bench("json_object: after '{'", *object, "{");
  Bench("json_object: inside a string", *object, R"({"k":"ab)");
  Bench("json_object: inside a number", *object, R"({"k":12)");
  Bench("json_object: after ':'", *object, R"({"k":)");
  // A whole output, token by token (Allowed then Accept), on a fresh grammar: cold, then with its cache warm.
  const std::string text =
      R"({"name":"Ada Lovelace, mathematician","age":36,"score":-12.5e3,"tags":["math","poetry"],"kind":"person"})";
  auto ids = (*tok)->Encode(text);
  auto fresh = Grammar::FromJsonSchema(schema, *vocab, ends);
  if (!ids.ok() || !fresh.ok()) return 1;
  for (const char* pass : {"cold", "warm"}) {
    Matcher m(*fresh);
    const auto start = Clock::now();
    for (int32_t id : *ids) {
      if (!TokenAllowed(m.Allowed(), id) || !m.Accept(id).ok()) {
        std::fprintf(stderr, "token %d rejected\n", id);
        return 1;
      }
    }
    if (!TokenAllowed(m.Allowed(), ends[0])) return 1;
    std::printf("decode loop (%s cache): %zu tokens, %.1f us per token (Allowed + Accept)\n", pass, ids->size(),
                Micros(Clock::now() - start) / ids->size());
  }
  return 0;
}

}  // namespace
}  // namespace gemma::structured

int main(int argc, char** argv) { return gemma::structured::Main(argc, argv); }
