// gemma score: log P(token t | tokens < t) for every prompt token after the first.
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "engine/cache_salt.h"
#include "engine/local_executor.h"
#include "engine/run_batch.h"
#include "nlohmann/json.hpp"
#include "tools/cli_common.h"
#include "tools/commands.h"
#include "tools/intervention_flags.h"
#include "tools/local_model.h"

namespace gemma {

int ScoreCommand(int argc, char** argv) {
  const char* kCmd = "score";
  Args args(kCmd, "[--model DIR] (--prompt TEXT | --prompt-ids 2,17,...) --json");
  args.Flag("model", "checkpoint directory (default: the embedded tiny model)")
      .Flag("prompt", "text to score; <bos> is prepended")
      .Flag("prompt-ids", "token ids to score, comma-separated, used as given")
      .Flag("threads", "compute threads; 0 = all cores (default 0)")
      .Flag("tp", "tensor-parallel degree: run a local group of N processes (default 1)")
      .Flag("tp-transport", "collectives of a local group: shm (shared memory, default) or gloo (TCP)")
      .Flag("tp-timeout-ms", "a dead or hung rank fails the run within this time, 100..3600000 (default 30000)")
      .Flag("adapter", "a LoRA adapter folder as peft saves it (adapter_config.json, adapter_model.safetensors)")
      .Flag("logits", "also the logits of each scored position: the K largest (1..256, `top_logits`: [[id, logit], "
                      "...] per position) or `all` (`logits`: [positions][vocab])")
      .Flag("json", "print one JSON object with token_ids and logprobs (the only output format)", true);
  DeclareHiddenStatesFlag(args);
  DeclareInterventionFlags(args);
  DeclareDeviceFlags(args, "cpu (default) or cuda: rank r of a --tp group runs on GPU r");
  int code;
  if (!ParseOrExit(args, argc, argv, kCmd, &code)) return code;
  auto threads = args.GetInt("threads", 0, 0, 4096);
  if (!threads.ok()) return Fail(kCmd, threads.status());
  auto tp = args.GetInt("tp", 1, 1, 64);
  auto tp_timeout = args.GetInt("tp-timeout-ms", 30000, 100, 3600000);
  if (!tp_timeout.ok()) return Fail(kCmd, tp_timeout.status());
  if (!tp.ok()) return Fail(kCmd, tp.status());
  int32_t logits = 0;
  if (const std::string k = args.Get("logits"); k == "all") {
    logits = -1;
  } else if (!k.empty()) {
    auto top = args.GetInt("logits", 0, 1, StepRow::kMaxTopLogits);
    if (!top.ok()) return Fail(kCmd, absl::InvalidArgumentError(absl::StrCat(top.status().message(), ", or all")));
    logits = static_cast<int32_t>(*top);
  }
  SetThreads(static_cast<int>(*threads));
  auto model = OpenLocalModel(args.Get("model"));
  if (!model.ok()) return Fail(kCmd, model.status());
  const ModelConfig& config = model->config();
  auto prompt = PromptIds(args, model->tokenizer.get(), config.vocab_size, config.bos_id, false);
  if (!prompt.ok()) return Fail(kCmd, prompt.status());
  if (static_cast<int64_t>(prompt->size()) > config.max_position_embeddings) {
    return Fail(kCmd, absl::InvalidArgumentError("prompt of " + std::to_string(prompt->size()) +
                                                 " tokens exceeds the model's context of " +
                                                 std::to_string(config.max_position_embeddings)));
  }
  auto interventions = InterventionsFromFlags(args, config);
  if (!interventions.ok()) return Fail(kCmd, interventions.status());
  auto hidden_states = HiddenStatesFromFlag(args, config);
  if (!hidden_states.ok()) return Fail(kCmd, hidden_states.status());
  auto device = DeviceChoiceFromFlags(args);
  if (!device.ok()) return Fail(kCmd, device.status());
  if (auto s = AttachBackend(*model, static_cast<int64_t>(prompt->size()), static_cast<int>(*tp), *tp_timeout, args.Get("tp-transport", "shm"),
                              *device);
      !s.ok()) {
    return Fail(kCmd, s);
  }
  SequenceSpec req;
  req.prompt = *prompt;
  req.score = true;
  req.score_logits = logits;
  req.interventions = *std::move(interventions);
  req.activations = *hidden_states;
  if (!req.activations.empty()) {
    for (int32_t p = 0; p < static_cast<int32_t>(prompt->size()); ++p) {
      req.activation_positions.push_back(p);
    }
  }
  auto adapter = RegisterAdapterFlag(*model, args.Get("adapter"));
  if (!adapter.ok()) return Fail(kCmd, adapter.status());
  req.adapter = *adapter;
  req.cache_salt = ModelChangesCacheSalt(req.adapter, req.interventions);
  LocalExecutor executor(model->backend.get(), SequenceHistory::kDefaultMaxSequences, model->adapters.get());
  Engine engine(executor.EngineOptionsFor({}), &executor);
  auto results = RunBatch(engine, {req});
  if (!results.ok()) return Fail(kCmd, results.status());
  const CompletedSequence& done = (*results)[0];
  nlohmann::json out = {{"token_ids", *prompt},
                        {"logprobs", done.prompt_logprobs}};
  if (logits > 0) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& position : done.top_logits) {
      nlohmann::json largest = nlohmann::json::array();
      for (const TokenLogprob& t : position) largest.push_back({t.token, t.logprob});
      top.push_back(std::move(largest));
    }
    out["top_logits"] = std::move(top);
  } else if (logits < 0) {
    const size_t rows = done.prompt_logprobs.size(), vocab = static_cast<size_t>(config.vocab_size);
    nlohmann::json all = nlohmann::json::array();
    for (size_t p = 0; p < rows && done.logits.size() == rows * vocab; ++p) {
      all.push_back(std::vector<float>(done.logits.begin() + p * vocab, done.logits.begin() + (p + 1) * vocab));
    }
    out["logits"] = std::move(all);
  }
  if (!hidden_states->empty()) {
    // [index][position][hidden], in the order asked.
    const size_t H = static_cast<size_t>(config.hidden_size);
    nlohmann::json states = nlohmann::json::array();
    nlohmann::json indices = nlohmann::json::array();
    for (size_t j = 0; j < hidden_states->size(); ++j) {
      const std::vector<float>& all = done.activations[j];
      if (all.size() != prompt->size() * H) {
        return Fail(kCmd, absl::InternalError(
                              "hidden states of " + std::to_string(all.size()) +
                              " values came back for " +
                              std::to_string(prompt->size()) + " positions"));
      }
      nlohmann::json rows = nlohmann::json::array();
      for (size_t p = 0; p < prompt->size(); ++p) {
        rows.push_back(
            std::vector<float>(all.begin() + p * H, all.begin() + (p + 1) * H));
      }
      states.push_back(std::move(rows));
      indices.push_back((*hidden_states)[j].index);
    }
    out["hidden_states"] = std::move(states);
    out["hidden_state_indices"] = std::move(indices);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace gemma
