#include "tools/args.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gemma {

Args::Args(std::string command, std::string synopsis) : command_(std::move(command)), synopsis_(std::move(synopsis)) {}

Args& Args::Flag(const std::string& name, const std::string& help, bool boolean) {
  specs_[name] = {help, boolean};
  order_.push_back(name);
  return *this;
}

Args& Args::RepeatedFlag(const std::string& name, const std::string& help) {
  specs_[name] = {help, false, true};
  order_.push_back(name);
  return *this;
}

absl::Status Args::Parse(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\"; see gemma ", command_, " --help"));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto spec = specs_.find(name);
    if (spec == specs_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " for gemma ", command_, "; see --help"));
    }
    if (values_.count(name) && !spec->second.repeated) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " given more than once"));
    }
    if (spec->second.boolean) {
      if (has_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value (or =true/=false)"));
      }
      if (!has_value) value = "true";
      if (value == "true") values_[name] = value;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      // A flag where the value should be is a value left out (--served-model-name --port 80), not a name; a value
      // that does start with "--" goes after '='.
      if (std::string_view(argv[i + 1]).starts_with("--")) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value, and ", argv[i + 1],
                                                       " follows it (a value starting with -- goes as --", name,
                                                       "=VALUE)"));
      }
      value = argv[++i];
    }
    values_[name] = value;
    if (spec->second.repeated) repeated_values_[name].push_back(value);
  }
  return absl::OkStatus();
}

std::string Args::Usage() const {
  std::string out = absl::StrCat("usage: gemma ", command_, " ", synopsis_, "\n\nflags:\n");
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    absl::StrAppend(&out, "  --", name, s.boolean ? "" : " VALUE",
                    s.repeated ? " (repeatable)" : "", "\n      ", s.help,
                    "\n");
  }
  return out;
}

std::string Args::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = repeated_values_.find(name);
  return it == repeated_values_.end() ? std::vector<std::string>() : it->second;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " \"", it->second, "\" is invalid; allowed: an integer in [",
                                                   min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name, double fallback, double min, double max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v) || v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " \"", it->second, "\" is invalid; allowed: a number in [",
                                                   min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<std::vector<int32_t>> Args::GetIntList(const std::string& name, int64_t min, int64_t max) const {
  std::vector<int32_t> out;
  auto it = values_.find(name);
  if (it == values_.end()) return out;
  for (absl::string_view part : absl::StrSplit(it->second, ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v < min || v > max) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": \"", part, "\" is invalid; allowed: integers in [", min,
                                                     ", ", max, "], comma-separated"));
    }
    out.push_back(static_cast<int32_t>(v));
  }
  return out;
}

}  // namespace gemma
