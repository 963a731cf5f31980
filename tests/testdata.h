// Where tests find reference data: $GEMMA_TESTDATA, else ../shared/testdata beside the source tree.
#pragma once

#include <string>

namespace gemma::testing {

// The one setting: the testdata root.
std::string TestdataRoot();
// gemma-tiny from the root, or the copy bundled in tests/data when the root lacks it.
std::string GemmaTinyDir();
// gemma2-tiny and gemma3-tiny (Gemma 2 and 3 checkpoints with reference outputs); empty (and a loud message on
// stderr) when absent.
std::string Gemma2TinyDir();
std::string Gemma3TinyDir();
// gemma-lora-tiny (peft adapters for gemma-tiny with reference outputs); empty (and a loud message) when absent.
std::string GemmaLoraTinyDir();
// gemma-activations-tiny (gemma-tiny's activations and interventions); empty
// (and a loud message) when absent.
std::string GemmaActivationsTinyDir();
// The Gemma 3 tokenizer folder; empty (and a loud message on stderr) when absent.
std::string Gemma3TokenizerDir();
// The whole content of a file.
std::string ReadFile(const std::string& path);

}  // namespace gemma::testing
