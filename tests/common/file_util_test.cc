// WriteFileAtomically: the new contents replace the old whole, and a write that fails leaves the
// old file as it was, with no temporary file beside it.
#include "common/file_util.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace troupe {
namespace {

class WriteFileAtomicallyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-file-util-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  // How many entries the directory holds (a leftover temporary file would be one more).
  size_t Entries() const {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      (void)e;
      ++n;
    }
    return n;
  }

  std::string dir_;
};

TEST_F(WriteFileAtomicallyTest, CreatesAndThenReplacesTheFileWhole) {
  const std::string path = dir_ + "/targets.json";
  ASSERT_TRUE(WriteFileAtomically(path, "first\n").ok());
  EXPECT_EQ(Read(path), "first\n");
  ASSERT_TRUE(WriteFileAtomically(path, "second, longer\n").ok());
  EXPECT_EQ(Read(path), "second, longer\n");
  ASSERT_TRUE(WriteFileAtomically(path, "").ok());
  EXPECT_EQ(Read(path), "");
  EXPECT_EQ(Entries(), 1u) << "a temporary file was left beside the file";
  const auto perms = std::filesystem::status(path).permissions();
  EXPECT_NE(perms & std::filesystem::perms::others_read, std::filesystem::perms::none)
      << "other programs (Prometheus) must be able to read it";
}

TEST_F(WriteFileAtomicallyTest, AFailedWriteKeepsTheOldFileAndLeavesNoTemporaryFile) {
  const std::string path = dir_ + "/targets.json";
  const std::string old_contents = "[{\"targets\": [\"127.0.0.1:9100\"]}]\n";
  ASSERT_TRUE(WriteFileAtomically(path, old_contents).ok());
  // A file size limit makes the write of the new contents fail part way (EFBIG), as a full disk
  // would; SIGXFSZ is ignored so that the write returns the error instead of ending the process.
  struct rlimit old_limit {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 16;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  Status s = WriteFileAtomically(path, std::string(4096, 'x'));
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot write"), std::string::npos) << s;
  EXPECT_NE(s.message().find(path), std::string::npos) << "the error names the file: " << s;
  EXPECT_EQ(Read(path), old_contents) << "the old file was changed";
  EXPECT_EQ(Entries(), 1u) << "the temporary file was left behind";
}

TEST_F(WriteFileAtomicallyTest, AMissingDirectoryIsAnErrorNamingTheFile) {
  const std::string path = dir_ + "/no/such/dir/head.address";
  Status s = WriteFileAtomically(path, "127.0.0.1:7400\n");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace troupe
