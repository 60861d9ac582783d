// Standby workers: Python interpreters that have imported a job's heavy modules (torch) ahead of
// time and wait to become a worker, so that a restarted attempt does not pay the import (about
// 1.4 s of torchrun's 4 s recovery here). Ray keeps prestarted workers for the same reason. This
// file holds the pure parts: which commands can run in a standby, the interpreter's program, and
// the line that turns a standby into a worker (docs/jobs.md, "Standby workers").
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::training {

/// A worker command a standby interpreter can run: `INTERPRETER [-u] [-B] SCRIPT ARGS...` or
/// `INTERPRETER [-u] [-B] -m MODULE ARGS...`.
struct PythonCommand {
  std::string interpreter;           ///< argv[0] (its file name starts with "python")
  std::vector<std::string> options;  ///< the interpreter options given (-u, -B): the standby gets them too
  bool module = false;               ///< -m MODULE instead of a script
  std::string target;                ///< the script's path or the module's name
  std::vector<std::string> args;     ///< the script's own arguments
};

/// `argv` as a PythonCommand, or InvalidArgument saying which form a standby needs (other
/// interpreter options, such as -O or -X, change how the interpreter starts and cannot be applied
/// to one that runs already).
StatusOr<PythonCommand> ParsePythonCommand(const std::vector<std::string>& argv);

/// True for a dotted Python module name ("torch", "torch.distributed").
bool IsPythonModuleName(const std::string& name);

/// The argv of a standby for `command`: the interpreter, its options, `-c` and the standby
/// program (kStandbyProgram), then the modules to import. The standby imports them, prints
/// kStandbyReadyLine, then reads one activation line from stdin; at end of input (nobody will use
/// it) it exits 0.
std::vector<std::string> StandbyArgv(const PythonCommand& command, const std::vector<std::string>& preload);

/// The activation line (one line of JSON) that makes a standby run `command` as a worker:
/// os.environ becomes exactly `env` ("NAME=value"), the working directory `working_dir` (empty:
/// unchanged), sys.argv and sys.path[0] what `python SCRIPT ARGS` or `python -m MODULE ARGS` would
/// set, and the script runs as __main__ (runpy). Its exit status and output are then the
/// script's own.
std::string ActivationLine(const PythonCommand& command, const std::vector<std::string>& env,
                           const std::string& working_dir);

/// The standby interpreter's program (Python source, run with -c).
extern const char* const kStandbyProgram;
/// The line a standby prints once it has imported every module (before it, it is not used).
inline constexpr const char* kStandbyReadyLine = "[troupe] standby ready";

}  // namespace troupe::training
