// The one-line JSON that `--json` prints: nlohmann::ordered_json written as docs/cli.md shows it.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace troupe::cli {

/// `value` on one line with ", " between items and ": " after keys (nlohmann's dump() has no
/// spaces), keys in the order they were added. Strings and numbers are written by nlohmann;
/// bytes that are not UTF-8 (a name or reason from outside) become U+FFFD instead of throwing.
inline std::string OneLineJson(const nlohmann::ordered_json& value) {
  auto scalar = [](const nlohmann::ordered_json& v) {
    return v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  };
  if (value.is_object()) {
    std::string out = "{";
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (it != value.begin()) out += ", ";
      out += scalar(it.key()) + ": " + OneLineJson(it.value());
    }
    return out + "}";
  }
  if (value.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + OneLineJson(value[i]);
    return out + "]";
  }
  return scalar(value);
}

}  // namespace troupe::cli
