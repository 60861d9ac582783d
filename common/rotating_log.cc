// RotatingLog.
#include "common/rotating_log.h"

#include <filesystem>

namespace troupe {

namespace fs = std::filesystem;

RotatingLog::RotatingLog(std::string path, uint64_t max_bytes, int kept)
    : path_(std::move(path)), max_(max_bytes), kept_(kept) {
  out_.open(path_, std::ios::app);
  std::error_code ec;
  size_ = fs::exists(path_, ec) ? fs::file_size(path_, ec) : 0;
}

void RotatingLog::Write(const std::string& line) {
  if (size_ + line.size() + 1 > max_ && size_ > 0) Rotate();
  out_ << line << '\n';
  out_.flush();
  size_ += line.size() + 1;
}

void RotatingLog::Rotate() {
  out_.close();
  std::error_code ec;
  for (int i = kept_; i >= 1; --i) {
    const std::string from = i == 1 ? path_ : path_ + "." + std::to_string(i - 1);
    fs::rename(from, path_ + "." + std::to_string(i), ec);
  }
  out_.open(path_, std::ios::trunc);
  size_ = 0;
}

}  // namespace troupe
