// `troupe check -c FILE [--json]`: validates a cluster file without starting or contacting anything.
#pragma once

#include <string>
#include <vector>

namespace troupe::cli {

/// Runs `troupe check` with the arguments after the command name. Exit 0 when the file is valid
/// (a one-line summary), 2 when it is not (every error, one per line, "file:line:col: field:
/// what") or the arguments are wrong. With --json, one JSON object on stdout:
/// {"file": ..., "valid": bool, "errors": [{"line", "column", "field", "message"}]}.
int RunCheck(const std::vector<std::string>& argv);

}  // namespace troupe::cli
