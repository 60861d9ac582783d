// Helpers of the bulk path's tests: a temporary directory removed with its contents.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace troupe::testing {

/// A fresh directory under the system's temp dir ("" if none could be made), removed with its
/// contents when the test ends.
struct TempDir {
  static std::string Make() {
    std::string name = (std::filesystem::temp_directory_path() / "troupe-bulk-XXXXXX").string();
    return mkdtemp(name.data()) == nullptr ? std::string() : name;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!dir.empty()) std::filesystem::remove_all(dir, ignored);
  }
  const std::string& path() const { return dir; }
  std::string dir = Make();
};

}  // namespace troupe::testing
