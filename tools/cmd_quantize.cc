// gemma quantize: write a checkpoint's projections as 4-bit GPTQ or AWQ tensors or compressed-tensors FP8, the
// layouts vLLM loads.
#include <cstdint>
#include <string>

#include "shard/checkpoint/checkpoint.h"
#include "shard/model/quantize.h"
#include "shard/model/quantized_checkpoint_writer.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace gemma {

int QuantizeCommand(int argc, char** argv) {
  const char* kCmd = "quantize";
  Args args(kCmd, "--in DIR --out DIR --weights int4|fp8 [--format gptq|awq] [--int4-group-size 32|64|128]");
  args.Flag("in", "a bf16, f16 or f32 checkpoint directory")
      .Flag("out", "directory to write the quantized checkpoint into (config.json, model.safetensors, tokenizer)")
      .Flag("weights", "int4: 4-bit weights with a scale and a zero per group (W4A16); fp8: E4M3 weights with a "
                       "scale per output channel, in the compressed-tensors layout")
      .Flag("format", "int4 only: gptq (default; AutoGPTQ's layout) or awq (AutoAWQ's GEMM layout)")
      .Flag("int4-group-size", "input columns per group: 32, 64 or 128 (default 128); one size for every matrix, "
                               "as the formats' quantization_config holds one");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  if (!args.Has("in") || !args.Has("out")) {
    return Fail(kCmd, absl::InvalidArgumentError("--in DIR and --out DIR are required"));
  }
  const std::string weights = args.Get("weights");
  if (weights != "int4" && weights != "fp8") {
    return Fail(kCmd, absl::InvalidArgumentError(
                          "--weights \"" + weights + "\" is not written ahead of time; allowed: int4, fp8 (int8 is "
                          "quantized at load: serve the bf16 checkpoint with --weights int8)"));
  }
  const bool fp8 = weights == "fp8";
  if (fp8 && (args.Has("format") || args.Has("int4-group-size"))) {
    return Fail(kCmd, absl::InvalidArgumentError("--format and --int4-group-size are for --weights int4; fp8 is "
                                                 "written in the compressed-tensors layout"));
  }
  const std::string format = args.Get("format", "gptq");
  if (format != "gptq" && format != "awq") {
    return Fail(kCmd, absl::InvalidArgumentError("--format \"" + format + "\" is invalid; allowed: gptq, awq"));
  }
  // The file records one size: nothing is left to choose at load.
  auto group = Int4GroupSizeFlag(args, 128, /*zero_chooses=*/false);
  if (!group.ok()) return Fail(kCmd, group.status());
  auto in = Checkpoint::Open(args.Get("in"));
  if (!in.ok()) return Fail(kCmd, in.status());
  const auto method = fp8 ? CheckpointQuantization::Method::kFp8
                      : format == "awq" ? CheckpointQuantization::Method::kAwq
                                        : CheckpointQuantization::Method::kGptq;
  if (auto s = WriteQuantizedCheckpoint(**in, args.Get("out"), method, static_cast<int>(*group)); !s.ok()) {
    return Fail(kCmd, s);
  }
  if (fp8) {
    std::printf("wrote %s (compressed-tensors, FP8 E4M3, a scale per output channel)\n", args.Get("out").c_str());
  } else {
    std::printf("wrote %s (%s, 4-bit, groups of %d)\n", args.Get("out").c_str(), format.c_str(),
                static_cast<int>(*group));
  }
  return 0;
}

}  // namespace gemma
