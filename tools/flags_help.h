// --help for the programs that take abseil flags (gemma-worker, gemma-router).
#pragma once

#include <string>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace gemma {

// --help lists the flags defined under `folder` ("worker/"), each file named from the source tree's top wherever it
// was built; abseil's default looks for files named after the program and finds none of ours.
inline void ListFlagsOfFolderInHelp(const char* folder) {
  static const std::string slash_folder = std::string("/") + folder;
  absl::FlagsUsageConfig usage;
  // Given the normalized name below.
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StartsWith(file, slash_folder.substr(1)) || absl::StrContains(file, slash_folder);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.normalize_filename = [](absl::string_view file) {
    const size_t at = file.rfind(slash_folder);
    return std::string(at == absl::string_view::npos ? file : file.substr(at + 1));
  };
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace gemma
