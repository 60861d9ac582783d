// Tests of the troupe binary as an operator runs it.
#include <gtest/gtest.h>
#include <sys/wait.h>

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

}  // namespace
}  // namespace troupe
