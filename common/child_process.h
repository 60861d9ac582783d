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

/// How a child is started (ChildProcess::Spawn).
struct SpawnOptions {
  /// "NAME=value" entries. Each replaces the variable of that name in this process's environment
  /// (the child never sees two values of one name: getenv() would return the first).
  std::vector<std::string> env;
  /// Variables of this process's environment whose names start with one of these prefixes are
  /// not passed on (a GPU slice's "TROUPE_" and "CUDA_" settings must not leak from the caller).
  std::vector<std::string> drop_env_prefixes;
  /// The child's stderr goes to the same pipe as its stdout.
  bool merge_stderr = false;
  /// The child uses this process's stdin, stdout and stderr instead of pipes (as a shell runs a
  /// command); WriteLine and ReadLine then fail with FailedPrecondition.
  bool inherit_stdio = false;
  /// The child is killed (SIGKILL) when the thread that spawned it ends, whatever ends it, kill -9
  /// included (Linux's PR_SET_PDEATHSIG). Spawn from a thread that lives as long as the process
  /// (the main thread): the kernel ties this to the spawning thread, not the process.
  bool die_with_parent = false;
  /// The child leads a process group of its own, and a keeper process (started with it, in a
  /// session of its own) kills that whole group with SIGKILL as soon as this ChildProcess is
  /// destroyed or this process ends, however it ends: nothing the child started outlives it.
  /// Signal() then signals the group. A child that must read a terminal needs its group in the
  /// terminal's foreground as well: foreground_terminal.
  bool group_dies_with_parent = false;
  /// With group_dies_with_parent: a terminal (a descriptor of this process) whose foreground
  /// process group the child's group becomes before the program runs, as a job-control shell runs
  /// a foreground job (POSIX tcsetpgrp). The child may then read the terminal, and the terminal's
  /// keys (Ctrl-C, Ctrl-\, Ctrl-Z) signal its group, not this process. -1: none.
  int foreground_terminal = -1;
  /// The file to execute. Empty: argv[0], searched in PATH. Set, argv[0] is only the name the child
  /// shows in `ps` (a `troupe up` member runs the troupe binary as "troupe head ...").
  std::string program;
  /// The child's working directory (empty: this process's). A relative program path is taken
  /// relative to it, as a shell does after `cd`. Check that it exists first: a chdir that fails
  /// in the child is reported as the program failing to start.
  std::string working_dir;
};

/// The environment a child spawned with `options` gets: this process's, less the variables
/// named by options.drop_env_prefixes and those options.env sets, then options.env.
std::vector<std::string> ChildEnvironment(const SpawnOptions& options);

/// Makes `group` the foreground process group of the terminal `fd` (POSIX tcsetpgrp), with
/// SIGTTOU blocked meanwhile: a process outside the foreground group (a launcher taking the
/// terminal back from its stopped job) would otherwise be stopped by it. Async-signal-safe.
/// Returns 0, or the errno of tcsetpgrp (ENOTTY: `fd` is not this process's controlling terminal).
int SetForegroundGroup(int fd, pid_t group);

/// A running child process. stdin and stdout are pipes (unless SpawnOptions::inherit_stdio);
/// stderr is inherited unless merged. The destructor kills (SIGKILL) and reaps a child that is
/// still running. The child starts with no signal blocked, default dispositions and no descriptor
/// but its standard three. Not thread-safe.
class ChildProcess {
 public:
  /// Starts a child. InvalidArgument for an empty argv; Unavailable if the program cannot be
  /// executed (not found, not executable), with the reason.
  static StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                       const SpawnOptions& options);
  /// Starts argv[0] (searched in PATH) with `extra_env` ("NAME=value", replacing variables of the
  /// same name). With `merge_stderr`, the child's stderr goes to the same pipe as its stdout.
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
  /// Sends `signal` to the child (to its process group with group_dies_with_parent).
  void Signal(int signal);
  /// Sends SIGSTOP and returns once the child has stopped (kill() alone returns before the
  /// child stops, and it may still run for a moment).
  Status Suspend();
  /// Waits for the child to exit; returns its wait status. DeadlineExceeded after `timeout`.
  StatusOr<int> Wait(std::chrono::milliseconds timeout);
  /// Waits until the child has exited, without reaping it: until Wait() reaps it, its pid stays
  /// reserved, so a Signal() from another thread meanwhile cannot reach another process that
  /// reused the pid. DeadlineExceeded after `timeout`.
  Status AwaitExit(std::chrono::milliseconds timeout);
  /// Blocks until the child exits (returns true; not reaped, as AwaitExit) or stops (returns
  /// false; the stop is consumed, so the next call waits for the next change). For a launcher
  /// that relays a job-control stop (Ctrl-Z) to its own parent.
  StatusOr<bool> AwaitExitOrStop();
  /// True once Wait() has returned the child's exit (it is gone and reaped).
  bool reaped() const { return reaped_; }

 private:
  ChildProcess() = default;
  // Forks the keeper of group_dies_with_parent.
  Status StartKeeper();
  pid_t pid_ = -1;
  pid_t keeper_pid_ = -1;  // group_dies_with_parent: kills the child's group when keeper_fd_ closes
  int keeper_fd_ = -1;     // the write end of the keeper's pipe; nothing is ever written to it
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  bool reaped_ = false;
  std::string buffered_;
};

}  // namespace troupe
