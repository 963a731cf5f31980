// gemma make-tiny: write a random-weight checkpoint in the Hugging Face layout.
#include <cstdio>
#include <string>

#include "shard/checkpoint/checkpoint_writer.h"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/default_model.h"
#include "shard/model/published_shapes.h"

namespace gemma {

int MakeTinyCommand(int argc, char** argv) {
  const char* kCmd = "make-tiny";
  Args args(kCmd, "--out DIR [--shape " + ShapeNames("|") + "] [--layers N] [--seed S] [--dtype bf16|f16|f32]");
  args.Flag("out", "directory to write config.json, model.safetensors, tokenizer.model into")
      .Flag("shape", "one of " + ShapeNames(", ") +
                         " (default tiny; 2b and 7b are Gemma 1; the Gemma 2/3 shapes as Google published them, 4b "
                         "and up in the multimodal layout, text only)")
      .Flag("layers", "override the number of layers, 1..64")
      .Flag("seed", "random seed (default 1)")
      .Flag("dtype", "bf16 (default), f16 or f32");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  if (!args.Has("out")) return Fail(kCmd, absl::InvalidArgumentError("--out DIR is required"));
  auto shape = ShapeNamed(args.Get("shape", "tiny"));
  if (!shape.ok()) return Fail(kCmd, absl::InvalidArgumentError("--" + std::string(shape.status().message())));
  ModelConfig config = *std::move(shape);
  auto layers = args.GetInt("layers", config.num_layers, 1, 64);
  auto seed = args.GetInt("seed", 1, 0, INT64_MAX);
  if (!layers.ok()) return Fail(kCmd, layers.status());
  if (!seed.ok()) return Fail(kCmd, seed.status());
  SetNumLayers(static_cast<int>(*layers), &config);
  RandomCheckpointOptions options;
  options.seed = static_cast<uint64_t>(*seed);
  const std::string dtype = args.Get("dtype", "bf16");
  if (dtype == "bf16") {
    options.dtype = DType::kBF16;
  } else if (dtype == "f16") {
    options.dtype = DType::kF16;
  } else if (dtype == "f32") {
    options.dtype = DType::kF32;
  } else {
    return Fail(kCmd, absl::InvalidArgumentError("--dtype \"" + dtype + "\" is invalid; allowed: bf16, f16, f32"));
  }
  auto status = WriteRandomCheckpoint(args.Get("out"), config, options, EmbeddedTokenizerBytes());
  if (!status.ok()) return Fail(kCmd, status);
  const double parameters = static_cast<double>(config.ParameterCount());
  std::printf("wrote %s (%s, %.2f %s parameters)\n", args.Get("out").c_str(), config.DebugString().c_str(),
              parameters >= 1e9 ? parameters / 1e9 : parameters / 1e6, parameters >= 1e9 ? "B" : "M");
  return 0;
}

}  // namespace gemma
