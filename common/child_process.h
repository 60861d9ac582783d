// ChildProcess: starts a program with pipes to its stdin and stdout, for tests, benchmarks
// and launchers that talk to their children line by line.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe {

/// A running child process. stdin and stdout are pipes; stderr is inherited unless merged. The
/// destructor kills (SIGKILL) and reaps a child that is still running. Not thread-safe.
class ChildProcess {
 public:
  /// Starts argv[0] (searched in PATH) with `extra_env` ("NAME=value") added. With
  /// `merge_stderr`, the child's stderr goes to the same pipe as its stdout.
  static StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                       const std::vector<std::string>& extra_env = {},
                                                       bool merge_stderr = false);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  /// Writes `line` and a newline to the child's stdin.
  Status WriteLine(const std::string& line);
  /// The next line of stdout (without the newline); DeadlineExceeded after `timeout`,
  /// Unavailable at end of file.
  StatusOr<std::string> ReadLine(std::chrono::milliseconds timeout);
  /// Skips lines until one starts with `prefix`; returns the rest of that line.
  StatusOr<std::string> ReadLineWithPrefix(const std::string& prefix, std::chrono::milliseconds timeout);
  /// Sends `signal` to the child.
  void Signal(int signal);
  /// Sends SIGSTOP and returns once the child has stopped (kill() alone returns before the
  /// child stops, and it may still run for a moment).
  Status Suspend();
  /// Waits for the child to exit; returns its wait status. DeadlineExceeded after `timeout`.
  StatusOr<int> Wait(std::chrono::milliseconds timeout);

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  bool reaped_ = false;
  std::string buffered_;
};

}  // namespace troupe
