// JsonQuote: a string as a JSON string literal, for the hand-written JSON of `--json` output and
// the files troupe writes for other programs (Prometheus targets).
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace troupe {

/// `value` in double quotes, with quotes, backslashes and control characters escaped.
inline std::string JsonQuote(std::string_view value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace troupe
