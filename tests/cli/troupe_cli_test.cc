// Tests of the troupe binary as an operator runs it.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/child_process.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;

struct CliRun {
  int exit_code = -1;
  std::string output;
};

CliRun RunTroupe(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {TROUPE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  auto child = ChildProcess::Spawn(argv, {}, /*merge_stderr=*/true);
  EXPECT_TRUE(child.ok()) << child.status();
  CliRun run;
  if (!child.ok()) return run;
  while (true) {
    auto line = (*child)->ReadLine(60s);
    if (!line.ok()) break;
    run.output += *line + "\n";
  }
  auto status = (*child)->Wait(30s);
  EXPECT_TRUE(status.ok()) << status.status();
  if (status.ok() && WIFEXITED(*status)) run.exit_code = WEXITSTATUS(*status);
  return run;
}

TEST(TroupeCli, DemoExchangesFramesBetweenTwoProcessesAndReportsJson) {
  CliRun run = RunTroupe({"demo", "--frames", "2000", "--size", "256", "--json"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("\"ok\": true"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("\"frames_echoed\": 2000"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("\"frames_corrupt\": 0"), std::string::npos) << run.output;
}

TEST(TroupeCli, DemoOverTcpOnlyWorks) {
  CliRun run = RunTroupe({"demo", "--frames", "500", "--tls", "tcp"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("500 of 500 frames echoed intact"), std::string::npos) << run.output;
}

TEST(TroupeCli, BadFlagValueExitsTwoAndNamesTheFlag) {
  CliRun run = RunTroupe({"demo", "--frames", "lots"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.output.find("--frames: 'lots'"), std::string::npos) << run.output;
}

TEST(TroupeCli, UnknownCommandExitsTwoWithUsage) {
  CliRun run = RunTroupe({"launch-rockets"});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.output.find("unknown command 'launch-rockets'"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("usage: troupe"), std::string::npos);
}

TEST(TroupeCli, VersionPrintsTheVersion) {
  CliRun run = RunTroupe({"version"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(run.output.rfind("troupe ", 0), 0u) << run.output;
}

// A cluster file in a fresh directory, removed with it.
class CheckFile {
 public:
  explicit CheckFile(const std::string& yaml) {
    dir_ = (std::filesystem::temp_directory_path() / "troupe-check-XXXXXX").string();
    if (mkdtemp(dir_.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = dir_ + "/cluster.yaml";
    std::ofstream(path_) << yaml;
  }
  ~CheckFile() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

TEST(TroupeCli, CheckAcceptsTheShippedConfigWithAOneLineSummary) {
  CliRun run = RunTroupe({"check", "-c", TROUPE_SOURCE_DIR "/configs/local.yaml"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("local.yaml: valid: cluster 'local', 2 nodes"), std::string::npos) << run.output;
  EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
}

TEST(TroupeCli, CheckReportsEveryErrorAtOnceAndExitsTwo) {
  CheckFile file(
      "cluster:\n  name: t\n  token: secret-token\n  failure_timeout: .s\n  heartbeat_interval: 10000000h\n"
      "nodes:\n  - name: a\n    cpus: 4\n    cpus: 64\n    gpus:\n      simulated:\n        - memory: 24GiB\n"
      "    slice_memory: 4096\n");
  CliRun run = RunTroupe({"check", "-c", file.path()});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find(file.path() + ":4:20: cluster.failure_timeout: expected a duration"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find(file.path() + ":5:23: cluster.heartbeat_interval:"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find(file.path() + ":9:5: nodes[0].cpus: given twice, on line 8 and line 9"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find(":13:19: nodes[a].slice_memory: would make 6291456 slices of GPU sim-0"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("4 errors"), std::string::npos) << run.output;
}

TEST(TroupeCli, CheckJsonListsErrorsWithLineColumnAndField) {
  CheckFile file("cluster:\n  name: t\n  tokn: secret-token\n");
  CliRun run = RunTroupe({"check", "-c", file.path(), "--json"});
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("\"valid\": false"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("{\"line\": 3, \"column\": 3, \"field\": \"cluster.tokn\", \"message\": \"unknown key"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("\"field\": \"cluster.token\", \"message\": \"missing"), std::string::npos) << run.output;
  CliRun ok = RunTroupe({"check", "--json", "-c", TROUPE_SOURCE_DIR "/configs/local.yaml"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("\"valid\": true, \"errors\": []"), std::string::npos) << ok.output;
}

TEST(TroupeCli, CheckWithoutAFileOrWithAMissingOneExitsTwo) {
  CliRun none = RunTroupe({"check"});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.output.find("-c FILE is required"), std::string::npos) << none.output;
  CliRun missing = RunTroupe({"check", "-c", "/no/such/cluster.yaml"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.output.find("/no/such/cluster.yaml: (file): cannot read"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace troupe
