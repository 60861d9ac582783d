// Logging set-up: one spdlog logger for the process, configured from a level name.
#pragma once

#include <string_view>

#include "common/status.h"

namespace troupe {

/// Sets the process-wide log level ("trace", "debug", "info", "warn", "error", "off")
/// and the line format. Returns InvalidArgument naming the bad level.
Status InitLogging(std::string_view level);

}  // namespace troupe
