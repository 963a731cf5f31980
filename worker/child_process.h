// Starting, watching and stopping child processes: the worker's rank launcher and the gemma command's local cluster.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

struct SpawnOptions {
  // Its own process group, so a terminal's Ctrl-C reaches only the parent, which stops the child itself.
  bool own_process_group = false;
  // Sent parent_death_signal when the parent dies, even by SIGKILL, so no child outlives its launcher: SIGKILL for
  // a rank, SIGTERM for what should drain and clean up first. The signal comes when the spawning *thread* ends
  // (Linux's PR_SET_PDEATHSIG), so spawn from a thread that lives as long as the process: the main one.
  bool die_with_parent = false;
  int parent_death_signal = SIGKILL;
};

// Runs `binary args...`. Internal when fork fails; a binary that cannot be executed exits 127 with a message.
absl::StatusOr<pid_t> SpawnChild(const std::string& binary, const std::vector<std::string>& args,
                                 const SpawnOptions& options = {});

// "exit status 3", "killed by signal 9 (Killed)": a waitpid status in words.
std::string DescribeExit(int wait_status);

// Sends SIGTERM to every child still running, waits up to `grace` for them all, then SIGKILLs and reaps the rest.
// Children already reaped must not be in `pids`.
void StopChildren(const std::vector<pid_t>& pids, std::chrono::milliseconds grace);

// This executable's path, or `fallback` when /proc is not there.
std::string SelfExecutable(const std::string& fallback);

}  // namespace gemma
