// RotatingLog: a child process's output as a log file of bounded size (training workers'
// rank-R.log, serving backends' replica logs).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace troupe {

/// Appends lines to `path` (created if missing, appended to if present), rotating it when the
/// next line would take it past `max_bytes`: path -> path.1 -> path.2 ... up to `kept` older
/// files, the oldest dropped, so a chatty child cannot fill the disk (at most about
/// (kept + 1) x max_bytes). Each line is flushed as written (a crash loses none). Not
/// thread-safe; write errors are ignored (a full disk must not stop the child).
class RotatingLog {
 public:
  RotatingLog(std::string path, uint64_t max_bytes, int kept);
  /// Appends `line` and a newline.
  void Write(const std::string& line);

 private:
  void Rotate();
  std::string path_;
  uint64_t max_;
  int kept_;
  uint64_t size_ = 0;
  std::ofstream out_;
};

}  // namespace troupe
