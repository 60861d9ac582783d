// Standby workers: the pure parts.
#include "actors/training/standby.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace troupe::training {

// Imports the modules named after -c's program, then waits for one activation line. The script
// then has the same stdin as a worker started cold: the launcher's pipe, on which nothing more
// comes.
const char* const kStandbyProgram = R"PY(
import importlib, json, os, runpy, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("[troupe] standby ready", flush=True)
line = sys.stdin.readline()
if not line:
    sys.exit(0)
spec = json.loads(line)
os.environ.clear()
os.environ.update(spec["env"])
if spec["cwd"]:
    os.chdir(spec["cwd"])
if spec["module"]:
    sys.argv = ["-m"] + spec["args"]
    sys.path[0] = os.getcwd()
    runpy.run_module(spec["target"], run_name="__main__", alter_sys=True)
else:
    sys.argv = [spec["target"]] + spec["args"]
    sys.path[0] = os.path.dirname(os.path.abspath(spec["target"]))
    runpy.run_path(spec["target"], run_name="__main__")
)PY";

bool IsPythonModuleName(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  bool start = true;
  for (char c : name) {
    if (c == '.') {
      if (start) return false;  // ".."
      start = true;
      continue;
    }
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && !start)) return false;
    start = false;
  }
  return true;
}

StatusOr<PythonCommand> ParsePythonCommand(const std::vector<std::string>& argv) {
  const std::string need = "standby workers (entry.preload) need the command `python [-u] SCRIPT ARGS...` or "
                           "`python [-u] -m MODULE ARGS...`";
  if (argv.empty()) return InvalidArgumentError(need + "; the command is empty");
  PythonCommand out;
  out.interpreter = argv[0];
  if (std::filesystem::path(argv[0]).filename().string().rfind("python", 0) != 0) {
    return InvalidArgumentError(need + "; '" + argv[0] + "' is not a Python interpreter");
  }
  size_t i = 1;
  for (; i < argv.size() && !argv[i].empty() && argv[i][0] == '-'; ++i) {
    const std::string& option = argv[i];
    if (option == "-u" || option == "-B") {
      out.options.push_back(option);
    } else if (option == "-m") {
      if (i + 1 >= argv.size() || !IsPythonModuleName(argv[i + 1])) {
        return InvalidArgumentError(need + "; -m must be followed by a module name");
      }
      out.module = true;
      out.target = argv[i + 1];
      out.args.assign(argv.begin() + static_cast<long>(i) + 2, argv.end());
      return out;
    } else {
      return InvalidArgumentError(need + "; the interpreter option '" + option + "' cannot be given to one that runs already");
    }
  }
  if (i >= argv.size()) return InvalidArgumentError(need + "; no script is named");
  out.target = argv[i];
  out.args.assign(argv.begin() + static_cast<long>(i) + 1, argv.end());
  return out;
}

std::vector<std::string> StandbyArgv(const PythonCommand& command, const std::vector<std::string>& preload) {
  std::vector<std::string> argv{command.interpreter};
  argv.insert(argv.end(), command.options.begin(), command.options.end());
  argv.push_back("-c");
  argv.push_back(kStandbyProgram);
  argv.insert(argv.end(), preload.begin(), preload.end());
  return argv;
}

std::string ActivationLine(const PythonCommand& command, const std::vector<std::string>& env,
                           const std::string& working_dir) {
  nlohmann::json environment = nlohmann::json::object();
  for (const auto& entry : env) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    environment[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  nlohmann::json line{{"env", environment},       {"cwd", working_dir}, {"module", command.module},
                      {"target", command.target}, {"args", command.args}};
  // dump() escapes newlines inside strings: the line is one line.
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace troupe::training
