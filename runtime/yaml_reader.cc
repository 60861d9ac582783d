// YamlReader and the size and duration syntax of troupe's YAML files.
#include "runtime/yaml_reader.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <system_error>

namespace troupe::runtime {

namespace {

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

bool IsLowerAlnum(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'); }

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

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

bool YamlReader::Bool(const YAML::Node& node, const std::string& field, bool* out) {
  if (Absent(node)) return true;
  if (node.IsScalar() && (node.Scalar() == "true" || node.Scalar() == "false")) {
    *out = node.Scalar() == "true";
    return true;
  }
  Error(node, field, "expected true or false" + (node.IsScalar() ? ", got '" + node.Scalar() + "'" : std::string()));
  return false;
}

bool YamlReader::Number(const YAML::Node& node, const std::string& field, double min, double max, double* out) {
  if (Absent(node)) return true;
  if (!node.IsScalar()) {
    Error(node, field, "expected a number");
    return false;
  }
  const std::string& s = node.Scalar();
  size_t used = 0;
  const std::optional<double> value = ParseDecimal(s, &used);
  if (!value || used != s.size()) {
    Error(node, field, "expected a number such as 2 or 0.5, got '" + s + "'");
    return false;
  }
  if (*value < min || *value > max) {
    Error(node, field, "must be between " + fmt::format("{}", min) + " and " + fmt::format("{}", max) + ", got " + s);
    return false;
  }
  *out = *value;
  return true;
}

bool YamlReader::DnsLabel(const YAML::Node& node, const std::string& field, std::string* out) {
  std::string name;
  if (!String(node, field, &name)) return false;
  if (name.empty()) return true;
  if (!IsDnsLabel(name)) {
    Error(node, field,
          "'" + name + "' is not a valid name: lower-case letters, digits and '-', at most 63, starting and "
          "ending with a letter or digit");
    return false;
  }
  *out = name;
  return true;
}

bool YamlReader::WorkingDir(const YAML::Node& node, const std::string& field, const std::string& base_dir,
                            std::string* out) {
  *out = base_dir;
  std::string dir;
  if (!String(node, field, &dir)) return false;
  if (dir.empty()) return true;
  *out = AbsolutePath(base_dir, dir);
  struct stat st {};
  if (stat(out->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    Error(node, field, "no such directory: " + *out);
    return false;
  }
  return true;
}

bool YamlReader::Command(const YAML::Node& node, const std::string& field, const std::string& working_dir,
                         std::vector<std::string>* out) {
  if (!StringList(node, field, out)) return false;
  if (out->empty()) {
    Error(node, field, "must not be empty (the program and its arguments)");
    return false;
  }
  return Program(node[0], field, out->front(), working_dir);
}

// argv[0] must be there to run: a path (relative to the working directory) to an executable
// file, or a name found in PATH, as execvp looks it up.
bool YamlReader::Program(const YAML::Node& node, const std::string& field, const std::string& program,
                         const std::string& working_dir) {
  if (program.empty()) {
    Error(node, field, "the program (the first item) is empty");
    return false;
  }
  if (program.find('/') != std::string::npos) {
    const std::string path = AbsolutePath(working_dir, program);
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
      Error(node, field, "no such file: " + path);
      return false;
    }
    if (!IsExecutableFile(path)) {
      Error(node, field, path + " is not executable" + (S_ISDIR(st.st_mode) ? " (a directory)" : ""));
      return false;
    }
    return true;
  }
  const char* env_path = std::getenv("PATH");
  const std::string search = env_path != nullptr ? env_path : "";
  for (size_t start = 0; start <= search.size();) {
    size_t end = search.find(':', start);
    if (end == std::string::npos) end = search.size();
    // An empty entry is the current directory, as for execvp.
    const std::string dir = search.substr(start, end - start);
    if (IsExecutableFile(AbsolutePath(working_dir, dir.empty() ? "." : dir) + "/" + program)) return true;
    start = end + 1;
  }
  Error(node, field,
        "'" + program + "' not found in PATH (" + (search.empty() ? "unset" : search) + "); give its path");
  return false;
}

bool YamlReader::Environment(const YAML::Node& node, const std::string& field,
                             std::map<std::string, std::string>* out) {
  if (Absent(node)) return true;
  if (!CheckKeys(node, field, nullptr)) return false;
  std::set<std::string> seen;
  bool ok = true;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) continue;  // reported by CheckKeys
    const std::string name = kv.first.Scalar();
    const std::string item = field + "." + name;
    if (!seen.insert(name).second) continue;  // a duplicate, reported by CheckKeys
    if (!IsEnvName(name)) {
      Error(kv.first, item, "not a variable name (letters, digits and '_', not starting with a digit)");
      ok = false;
      continue;
    }
    std::string value;
    if (String(kv.second, item, &value) && Expand(kv.second, item, &value)) {
      (*out)[name] = value;
    } else {
      ok = false;
    }
  }
  return ok;
}

// `${VAR}` in `*text` -> VAR's value in this process's environment; `$${` -> a literal `${`.
// False (every unset variable named) when one cannot be expanded.
bool YamlReader::Expand(const YAML::Node& node, const std::string& field, std::string* text) {
  const std::string& in = *text;
  std::string out;
  bool ok = true;
  for (size_t i = 0; i < in.size();) {
    if (in.compare(i, 3, "$${") == 0) {
      out += "${";
      i += 3;
      continue;
    }
    if (in.compare(i, 2, "${") != 0) {
      out += in[i++];
      continue;
    }
    const size_t close = in.find('}', i + 2);
    if (close == std::string::npos) {
      Error(node, field, "unterminated ${ in '" + in + "' (write $${ for a literal ${)");
      return false;
    }
    const std::string name = in.substr(i + 2, close - i - 2);
    const char* value = IsEnvName(name) ? std::getenv(name.c_str()) : nullptr;
    if (!IsEnvName(name)) {
      Error(node, field, "'${" + name + "}' does not name a variable (write $${ for a literal ${)");
      ok = false;
    } else if (value == nullptr) {
      Error(node, field,
            "environment variable " + name + " is not set (set it, or write $${" + name + "} for a literal ${" + name +
                "})");
      ok = false;
    } else {
      out += value;
    }
    i = close + 1;
  }
  *text = std::move(out);
  return ok;
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

std::string FormatDuration(std::chrono::milliseconds duration) {
  const int64_t ms = duration.count();
  if (ms % 3600000 == 0 && ms > 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && ms > 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0 && ms > 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

bool IsDnsLabel(const std::string& s) {
  if (s.empty() || s.size() > 63 || !IsLowerAlnum(s.front()) || !IsLowerAlnum(s.back())) return false;
  for (char ch : s) {
    if (!IsLowerAlnum(ch) && ch != '-') return false;
  }
  return true;
}

bool IsEnvName(const std::string& s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  for (char ch : s) {
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) return false;
  }
  return true;
}

std::string AbsolutePath(const std::string& base, const std::string& path) {
  std::string s = (std::filesystem::path(base) / path).lexically_normal().string();
  if (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string AbsoluteDir(const std::string& dir) {
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  return AbsolutePath(ec ? "/" : cwd.string(), dir.empty() ? "/" : dir);
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
