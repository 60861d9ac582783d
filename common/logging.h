// Logging set-up: one spdlog logger for the process, configured from a level name.
#pragma once

#include <string_view>

#include "common/status.h"

namespace troupe {

/// Sends the process's logs to stderr (stdout is for command output) and sets the log
/// level ("trace", "debug", "info", "warn", "error", "off") and the line format.
/// Returns InvalidArgument naming the bad level. Call it first thing in main().
Status InitLogging(std::string_view level);

}  // namespace troupe
