// `troupe check -c FILE [--json]`: validates a cluster file without starting or contacting anything.
#pragma once

#include <string>

namespace troupe::cli {

/// `troupe check`'s flags (declared with CLI11 in cli/troupe_main.cc).
struct CheckOptions {
  std::string config_path;  // -c, --config FILE
  bool json = false;        // --json
};

/// Runs `troupe check`. Exit 0 when the file is valid (a one-line summary), 2 when it is not
/// (every error, one per line, "file:line:col: field: what"). With --json, one JSON object on
/// stdout: {"file": ..., "valid": bool, "errors": [{"line", "column", "field", "message"}]}.
int RunCheck(const CheckOptions& options);

}  // namespace troupe::cli
