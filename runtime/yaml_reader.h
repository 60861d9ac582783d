// YamlReader: strict reading of troupe's YAML files (the cluster file, job and deployment specs): every problem
// is recorded with file, line, column and field, and reading goes on where it can.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

// Users of YamlReader include <yaml-cpp/yaml.h> themselves: this header keeps yaml-cpp a
// private dependency of troupe::runtime.
namespace YAML {
class Node;
}  // namespace YAML

namespace troupe::runtime {

/// The most errors listed for one file; a last line counts the rest.
inline constexpr size_t kMaxConfigErrors = 100;

/// One problem found in a file: where (line and column from 1; 0 when the problem is the file
/// as a whole), which field, and what is wrong.
struct ConfigError {
  std::string file;
  int line = 0;
  int column = 0;
  std::string field;
  std::string message;

  /// "file:line:column: field: message" (without line and column when they are 0).
  std::string ToString() const;
};

/// Reads one YAML document into a typed struct. A file's own reader derives from it (or holds
/// one) and walks the tree with these checks; each records an error and returns false when the
/// value is of the wrong shape, so the caller skips it and keeps reading. Field names are
/// dotted paths ("nodes[a].cpus"). Not thread-safe: one reader per document.
class YamlReader {
 public:
  /// `source` names the file in errors.
  explicit YamlReader(std::string source) : source_(std::move(source)) {}

  /// Loads `yaml` and, if it is YAML at all, calls `read` with its root; every error found (the
  /// first kMaxConfigErrors, then a line counting the rest), empty when the document is valid.
  /// A YAML syntax error is the only error then.
  std::vector<ConfigError> Read(const std::string& yaml, const std::function<void(const YAML::Node& root)>& read);

  const std::string& source() const { return source_; }
  /// Every error found, listed or not.
  size_t count() const { return count_; }

  void Error(const YAML::Node& node, const std::string& field, const std::string& what);

  /// False (and an error) when `map` is not a mapping: the caller skips it. Unknown, duplicate
  /// and non-scalar keys are errors but the known keys are still read. `allowed` null: any key.
  bool CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>* allowed);
  bool CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>& allowed) {
    return CheckKeys(map, field, &allowed);
  }

  // The value readers below leave `*out` as it is when the node is absent or null (the default
  // stays) and return true then.

  bool String(const YAML::Node& node, const std::string& field, std::string* out);
  /// A list of strings (a scalar is not taken for a list of one).
  bool StringList(const YAML::Node& node, const std::string& field, std::vector<std::string>* out);
  /// A string that must be one of `choices` (the error lists them in this order).
  bool OneOf(const YAML::Node& node, const std::string& field, const std::vector<std::string>& choices,
             std::string* out);
  /// A whole number in [0, max], plain decimal digits.
  bool Integer(const YAML::Node& node, const std::string& field, uint64_t* out, uint64_t max);
  template <class Int>
  bool Integer(const YAML::Node& node, const std::string& field, Int* out, uint64_t max) {
    uint64_t value = *out;
    if (!Integer(node, field, &value, max)) return false;
    *out = static_cast<Int>(value);
    return true;
  }
  /// A size (ParseSize) of at most `max` bytes.
  bool Size(const YAML::Node& node, const std::string& field, uint64_t max, uint64_t* out);
  /// A duration (ParseDuration) of at most `max`.
  bool Duration(const YAML::Node& node, const std::string& field, std::chrono::milliseconds max,
                std::chrono::milliseconds* out);
  /// `true` or `false` (YAML 1.2's booleans; not yes/no/on/off, which YAML 1.1 took for them).
  bool Bool(const YAML::Node& node, const std::string& field, bool* out);
  /// A plain decimal number ("2", "0.5", "1.5"; no sign, exponent, inf or nan) in [min, max].
  bool Number(const YAML::Node& node, const std::string& field, double min, double max, double* out);
  /// An optional name: a DNS label (IsDnsLabel). An empty string leaves `*out` as it is.
  bool DnsLabel(const YAML::Node& node, const std::string& field, std::string* out);

  // For specs that start programs (job and deployment specs): a command, its working directory
  // and its environment.

  /// `*out` = `base_dir` (absolute), or the directory the node names, taken relative to
  /// `base_dir` and made absolute; it must be a directory on this host.
  bool WorkingDir(const YAML::Node& node, const std::string& field, const std::string& base_dir, std::string* out);
  /// A command (argv as a list of strings; the caller says when it is missing): not empty, and
  /// argv[0] runnable as execvp would look it up: a path with a '/' (relative to `working_dir`)
  /// to an executable file, or a bare name found in PATH.
  bool Command(const YAML::Node& node, const std::string& field, const std::string& working_dir,
               std::vector<std::string>* out);
  /// A mapping of environment variable names ([A-Za-z_][A-Za-z0-9_]*) to strings, with `${VAR}`
  /// in the values expanded from this process's environment (an unset VAR is an error naming
  /// it; `$${` is a literal `${`; any other `$` stays as it is).
  bool Environment(const YAML::Node& node, const std::string& field, std::map<std::string, std::string>* out);

 private:
  // A scalar read by `parse` (ParseSize, ParseDuration), at most `max` (written by `format`).
  template <class T, class Parse, class Format>
  bool Bounded(const YAML::Node& node, const std::string& field, const char* example, Parse parse, T max,
               Format format, T* out);

  bool Program(const YAML::Node& node, const std::string& field, const std::string& program,
               const std::string& working_dir);
  bool Expand(const YAML::Node& node, const std::string& field, std::string* text);

  std::string source_;
  std::vector<ConfigError> errors_;
  size_t count_ = 0;
};

/// "8GiB", "512MiB", "1.5GB", "4096" (bytes) -> bytes. The number is plain decimal (digits and
/// at most one '.'); sizes of 2^64 bytes or more are refused.
StatusOr<uint64_t> ParseSize(const std::string& text);
/// "100ms", "1s", "2m", "1500us" -> milliseconds (at least 1 ms for a non-zero value). The
/// number is plain decimal; more than a year is refused (fields have tighter bounds).
StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);
/// 8589934592 -> "8GiB": the largest binary unit that divides it exactly.
std::string FormatBytes(uint64_t bytes);
/// 60000 ms -> "1m", 1500 ms -> "1500ms": the largest unit (h, m, s, ms) that divides it exactly.
std::string FormatDuration(std::chrono::milliseconds duration);

/// A DNS label (RFC 1123, as Kubernetes names objects): [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
bool IsDnsLabel(const std::string& s);
/// An environment variable's name: [A-Za-z_][A-Za-z0-9_]*
bool IsEnvName(const std::string& s);
/// `path` made absolute against the directory `base` (itself absolute), without "." and "..".
std::string AbsolutePath(const std::string& base, const std::string& path);
/// `dir` made absolute against the current directory ("" is the root: BaseDir("/spec.yaml")).
std::string AbsoluteDir(const std::string& dir);

/// The text of the file at `path`, at most `max_bytes` of it; InvalidArgument naming `what`
/// ("cluster config") and the path when it cannot be read or is longer.
StatusOr<std::string> ReadTextFile(const std::string& path, size_t max_bytes, const std::string& what);
/// The directory part of `path` ("." for a bare file name).
std::string BaseDir(const std::string& path);
/// OK when `errors` is empty, else InvalidArgument listing them, one per line.
Status ErrorsToStatus(const std::vector<ConfigError>& errors);

}  // namespace troupe::runtime
