// YamlReader and the size and duration syntax of troupe's YAML files.
#include "runtime/yaml_reader.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>

namespace troupe::runtime {

namespace {

std::string FormatDuration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms % 3600000 == 0 && ms > 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && ms > 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0 && ms > 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// A plain decimal number at the start of `text`: digits with at most one '.', at least one
// digit ("4096", "1.5", ".5", "2."). No sign, exponent, hex, inf or nan. `*used` is how many
// characters it took; nullopt if there is no such number or it is out of double's range.
std::optional<double> ParseDecimal(const std::string& text, size_t* used) {
  size_t i = 0;
  size_t digits = 0;
  size_t dots = 0;
  for (; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch >= '0' && ch <= '9') {
      ++digits;
    } else if (ch == '.') {
      if (++dots > 1) break;
    } else {
      break;
    }
  }
  *used = i;
  if (digits == 0) return std::nullopt;
  // The prefix holds only digits and one '.', so strtod reads exactly it (the C locale's
  // decimal point; troupe never calls setlocale).
  const std::string number = text.substr(0, i);
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || errno == ERANGE || !std::isfinite(value)) return std::nullopt;
  return value;
}

ConfigError YamlError(const std::string& source, const YAML::Exception& e, const std::string& what) {
  ConfigError error;
  error.file = source;
  if (e.mark.line >= 0) {
    error.line = e.mark.line + 1;
    error.column = e.mark.column + 1;
  }
  error.field = "(yaml)";
  error.message = what + e.msg;
  return error;
}

bool Absent(const YAML::Node& node) { return !node.IsDefined() || node.IsNull(); }

}  // namespace

std::string ConfigError::ToString() const {
  std::string where = file;
  if (line > 0) where += ":" + std::to_string(line) + ":" + std::to_string(column);
  return where + ": " + field + ": " + message;
}

std::vector<ConfigError> YamlReader::Read(const std::string& yaml,
                                          const std::function<void(const YAML::Node& root)>& read) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return {YamlError(source_, e, "not valid YAML: ")};
  }
  try {
    read(root);
  } catch (const YAML::Exception& e) {
    errors_.push_back(YamlError(source_, e, ""));
  }
  if (count_ > kMaxConfigErrors) {
    errors_.push_back(ConfigError{source_, 0, 0, "(file)",
                                  std::to_string(count_ - kMaxConfigErrors) + " more errors not listed (the first " +
                                      std::to_string(kMaxConfigErrors) + " are)"});
  }
  return std::move(errors_);
}

void YamlReader::Error(const YAML::Node& node, const std::string& field, const std::string& what) {
  ConfigError e;
  e.file = source_;
  if (node.IsDefined() && node.Mark().line >= 0) {
    e.line = node.Mark().line + 1;
    e.column = node.Mark().column + 1;
  }
  e.field = field;
  e.message = what;
  // A file of a megabyte can hold a hundred thousand errors; the first ones say enough.
  if (++count_ <= kMaxConfigErrors) errors_.push_back(std::move(e));
}

bool YamlReader::CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>* allowed) {
  if (!map.IsMap()) {
    Error(map, field.empty() ? "(file)" : field, "expected a mapping of keys");
    return false;
  }
  std::map<std::string, int> lines;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) {
      Error(kv.first, field.empty() ? "(key)" : field, "expected a plain key, not a list or mapping");
      continue;
    }
    const std::string key = kv.first.Scalar();
    const std::string name = field.empty() ? key : field + "." + key;
    const int line = kv.first.Mark().line + 1;
    if (auto [it, fresh] = lines.emplace(key, line); !fresh) {
      Error(kv.first, name,
            "given twice, on line " + std::to_string(it->second) + " and line " + std::to_string(line) +
                " (remove one)");
      continue;
    }
    if (allowed != nullptr && allowed->count(key) == 0) {
      std::string list;
      for (const auto& a : *allowed) list += (list.empty() ? "" : ", ") + a;
      Error(kv.first, name, "unknown key (expected one of: " + list + ")");
    }
  }
  return true;
}

bool YamlReader::String(const YAML::Node& node, const std::string& field, std::string* out) {
  if (Absent(node)) return true;
  if (!node.IsScalar()) {
    Error(node, field, "expected a string");
    return false;
  }
  *out = node.Scalar();
  return true;
}

bool YamlReader::StringList(const YAML::Node& node, const std::string& field, std::vector<std::string>* out) {
  if (Absent(node)) return true;
  if (!node.IsSequence()) {
    Error(node, field, "expected a list of strings, such as [a, b]");
    return false;
  }
  std::vector<std::string> list;
  bool ok = true;
  for (size_t i = 0; i < node.size(); ++i) {
    std::string item;
    ok = String(node[i], field + "[" + std::to_string(i) + "]", &item) && ok;
    list.push_back(std::move(item));
  }
  if (ok) *out = std::move(list);
  return ok;
}

bool YamlReader::OneOf(const YAML::Node& node, const std::string& field, const std::vector<std::string>& choices,
                       std::string* out) {
  std::string value;
  if (Absent(node)) return true;
  if (!String(node, field, &value)) return false;
  for (const auto& choice : choices) {
    if (value == choice) {
      *out = value;
      return true;
    }
  }
  std::string list;
  for (const auto& choice : choices) list += (list.empty() ? "" : ", ") + choice;
  Error(node, field, "expected one of " + list + "; got '" + value + "'");
  return false;
}

bool YamlReader::Integer(const YAML::Node& node, const std::string& field, uint64_t* out, uint64_t max) {
  if (Absent(node)) return true;
  if (!node.IsScalar()) {
    Error(node, field, "expected a whole number");
    return false;
  }
  const std::string& s = node.Scalar();
  bool digits = !s.empty() && s.size() <= 20;
  for (char ch : s) digits = digits && ch >= '0' && ch <= '9';
  if (!digits) {
    Error(node, field, "expected a whole number, got '" + s + "'");
    return false;
  }
  // At most 20 digits: compare as text first so that the conversion cannot wrap.
  const std::string kMax64 = "18446744073709551615";
  if (s.size() == 20 && s > kMax64) {
    Error(node, field, "must be at most " + std::to_string(max) + ", got " + s);
    return false;
  }
  const uint64_t value = std::strtoull(s.c_str(), nullptr, 10);
  if (value > max) {
    Error(node, field, "must be at most " + std::to_string(max) + ", got " + s);
    return false;
  }
  *out = value;
  return true;
}

bool YamlReader::Size(const YAML::Node& node, const std::string& field, uint64_t max, uint64_t* out) {
  return Bounded(node, field, "a size such as 8GiB", ParseSize, max, FormatBytes, out);
}

bool YamlReader::Duration(const YAML::Node& node, const std::string& field, std::chrono::milliseconds max,
                          std::chrono::milliseconds* out) {
  return Bounded(node, field, "a duration such as 100ms or 1s", ParseDuration, max, FormatDuration, out);
}

template <class T, class Parse, class Format>
bool YamlReader::Bounded(const YAML::Node& node, const std::string& field, const char* example, Parse parse, T max,
                         Format format, T* out) {
  if (Absent(node)) return true;
  if (!node.IsScalar()) {
    Error(node, field, std::string("expected ") + example);
    return false;
  }
  auto value = parse(node.Scalar());
  if (!value.ok()) {
    Error(node, field, value.status().message());
    return false;
  }
  if (*value > max) {
    Error(node, field, "must be at most " + format(max) + ", got '" + node.Scalar() + "'");
    return false;
  }
  *out = *value;
  return true;
}

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t u = 0;
  while (u + 1 < sizeof kUnits / sizeof kUnits[0] && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + kUnits[u];
}

StatusOr<uint64_t> ParseSize(const std::string& text) {
  size_t i = 0;
  const std::optional<double> number = ParseDecimal(text, &i);
  if (!number) return InvalidArgumentError("expected a size such as 8GiB, got '" + text + "'");
  std::string unit = text.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},       {"B", 1},       {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0},      {"KB", 1e3},      {"MB", 1e6},       {"GB", 1e9},
      {"TB", 1e12},  {"K", 1024.0},  {"M", 1048576.0}, {"G", 1073741824.0}};
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) {
      // Compared before converting: 2^64 and above would wrap.
      const double bytes = std::round(*number * factor);
      if (!(bytes < 18446744073709551616.0)) return InvalidArgumentError("size '" + text + "' is too large");
      return static_cast<uint64_t>(bytes);
    }
  }
  return InvalidArgumentError("unknown size unit '" + unit + "' in '" + text +
                              "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)");
}

StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  size_t i = 0;
  const std::optional<double> number = ParseDecimal(text, &i);
  if (!number) return InvalidArgumentError("expected a duration such as 100ms or 1s, got '" + text + "'");
  const std::string unit = text.substr(i);
  double ms = 0;
  if (unit == "us") ms = *number / 1000;
  else if (unit == "ms") ms = *number;
  else if (unit == "s") ms = *number * 1000;
  else if (unit == "m") ms = *number * 60000;
  else if (unit == "h") ms = *number * 3600000;
  else return InvalidArgumentError("unknown duration unit '" + unit + "' in '" + text + "' (use us, ms, s, m, h)");
  constexpr double kYearMs = 365.0 * 24 * 3600 * 1000;
  if (!(ms <= kYearMs)) return InvalidArgumentError("duration '" + text + "' is too long (at most a year)");
  if (*number > 0 && ms < 1) ms = 1;
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

StatusOr<std::string> ReadTextFile(const std::string& path, size_t max_bytes, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError("cannot read " + what + " " + path + " (does it exist?)");
  std::string text(max_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return InvalidArgumentError("cannot read " + what + " " + path);
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > max_bytes) {
    return InvalidArgumentError(what + " " + path + " is longer than " + FormatBytes(max_bytes));
  }
  return text;
}

std::string BaseDir(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

Status ErrorsToStatus(const std::vector<ConfigError>& errors) {
  if (errors.empty()) return OkStatus();
  std::string message;
  for (const auto& e : errors) message += (message.empty() ? "" : "\n") + e.ToString();
  return InvalidArgumentError(message);
}

}  // namespace troupe::runtime
