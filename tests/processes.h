// Starting and stopping the project's processes from tests: free loopback ports, child processes, their stderr.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace gemma::testing {

// A port that was free on 127.0.0.1 a moment ago.
int FreePort();

// A child process; killed (SIGKILL) when destroyed.
struct Process {
  pid_t pid = -1;
  std::string err_path;
  ~Process();
  void Kill();
  // Exit code, or -1 if still running after `wait` (128 when killed by a signal).
  int WaitExit(std::chrono::milliseconds wait);
  std::string Err() const;
};

// Runs `binary args...` with stderr to a temp file, stdout discarded, `env` entries ("K=V") added.
std::unique_ptr<Process> Start(const std::string& binary, const std::vector<std::string>& args,
                               const std::vector<std::string>& env = {});

// What `command` (run by the shell) writes to stdout and stderr.
std::string CommandOutput(const std::string& command);

// The body of a plain HTTP GET of `path` on 127.0.0.1:`port` (headers included), or "" if it cannot connect.
std::string HttpGet(int port, const std::string& path);

// Waits up to `wait` for a process to write its port number into `path`; 0 if it never did.
int WaitForPortFile(const std::string& path, std::chrono::milliseconds wait);

}  // namespace gemma::testing
