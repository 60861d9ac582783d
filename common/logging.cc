// Logging set-up.
#include "common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace troupe {

Status InitLogging(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // spdlog maps unknown names to "off"; only accept "off" when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return InvalidArgumentError("unknown log level '" + std::string(level) +
                                "' (expected trace, debug, info, warn, error or off)");
  }
  // Logs go to stderr: stdout belongs to a command's output (tables, --json).
  static const bool installed = [] {
    spdlog::set_default_logger(spdlog::stderr_color_mt("troupe"));
    return true;
  }();
  (void)installed;
  spdlog::set_level(parsed);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n %t] %v");
  return OkStatus();
}

}  // namespace troupe
