// gemma: local generation, scoring, tokenization, checkpoint making and benchmarks.
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"
#include "tools/local_model.h"

namespace {

constexpr char kUsage[] =
    "usage: gemma COMMAND [flags]\n\n"
    "commands:\n"
    "  generate   generate text from a prompt\n"
    "  score      log-probabilities of a prompt's tokens\n"
    "  tokenize   text to token ids\n"
    "  make-tiny  write a random-weight checkpoint (tiny, or a Gemma 1, 2 or 3 model's real shape)\n"
    "  quantize   write a checkpoint's projections as 4-bit GPTQ or AWQ tensors or FP8 (compressed-tensors)\n"
    "  compare-weights  how far int8, int4 or fp8 weights (or rounded activations) move the next-token distributions\n"
    "  kv-capacity  KV bytes per token and the longest context a budget holds, with and without KV windows\n"
    "  serve      run a local cluster: worker groups and a router\n"
    "  client     call a router: generate, stream, score\n"
    "  bench      measure prefill and decode speed (--tp N for a local group)\n"
    "  bench-collective  latency of the all-reduce/all-gather sizes of a decode step\n\n"
    "gemma COMMAND --help describes each.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "generate") return gemma::GenerateCommand(argc - 2, argv + 2);
  if (cmd == "score") return gemma::ScoreCommand(argc - 2, argv + 2);
  if (cmd == "tokenize") return gemma::TokenizeCommand(argc - 2, argv + 2);
  if (cmd == "make-tiny") return gemma::MakeTinyCommand(argc - 2, argv + 2);
  if (cmd == "quantize") return gemma::QuantizeCommand(argc - 2, argv + 2);
  if (cmd == "compare-weights") return gemma::CompareWeightsCommand(argc - 2, argv + 2);
  if (cmd == "kv-capacity") return gemma::KvCapacityCommand(argc - 2, argv + 2);
  if (cmd == "bench") return gemma::BenchCommand(argc - 2, argv + 2);
  if (cmd == "serve") return gemma::ServeCommand(argc - 2, argv + 2);
  if (cmd == "client") return gemma::ClientCommand(argc - 2, argv + 2);
  if (cmd == "bench-collective") return gemma::BenchCollectiveCommand(argc - 2, argv + 2);
  if (cmd == "tp-follower") return gemma::TpFollowerCommand(argc - 2, argv + 2);
  std::fprintf(stderr, "gemma: unknown command \"%s\"; allowed: generate, score, tokenize, make-tiny, quantize, compare-weights, kv-capacity, serve, client, bench, bench-collective\n", cmd.c_str());
  return 2;
}
