// Flag parsing for one subcommand of `gemma`: declared flags only, typed values with ranges, --help.
// (absl::flags is process-global; subcommands each need their own flag set.)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

// Not thread-safe; used once per process.
class Args {
 public:
  Args(std::string command, std::string synopsis);
  // Declares --name. Boolean flags take no value.
  Args& Flag(const std::string& name, const std::string& help, bool boolean = false);
  // Declares --name that may be given several times (GetAll has every value, in
  // order).
  Args& RepeatedFlag(const std::string& name, const std::string& help);
  // Parses argv after the subcommand. InvalidArgument for unknown flags, missing values, repeats or positionals.
  absl::Status Parse(int argc, char** argv);

  bool help() const { return help_; }
  std::string Usage() const;
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // Every value of a repeated flag, in the order given.
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback, double min, double max) const;
  // A comma-separated list of integers in [min, max].
  absl::StatusOr<std::vector<int32_t>> GetIntList(const std::string& name, int64_t min, int64_t max) const;

 private:
  struct Spec {
    std::string help;
    bool boolean;
    bool repeated = false;
  };
  std::string command_, synopsis_;
  std::map<std::string, Spec> specs_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> values_;  // a repeated flag's last value
  std::map<std::string, std::vector<std::string>> repeated_values_;
  bool help_ = false;
};

}  // namespace gemma
