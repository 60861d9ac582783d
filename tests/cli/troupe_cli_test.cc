// Tests of the troupe binary as an operator runs it.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
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

using Json = nlohmann::json;

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

// The one line of JSON in `output` (other lines: none expected, but logs would go elsewhere).
Json ParseJsonLine(const std::string& output) {
  Json json = Json::parse(output, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(json.is_discarded()) << "not one JSON value: " << output;
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << "one line: " << output;
  return json;
}

TEST(TroupeCli, DemoExchangesFramesBetweenTwoProcessesAndReportsJson) {
  CliRun run = RunTroupe({"demo", "--frames", "2000", "--size", "256", "--json"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  Json json = ParseJsonLine(run.output);
  EXPECT_EQ(json.value("ok", false), true) << run.output;
  EXPECT_EQ(json.value("frames_echoed", -1), 2000) << run.output;
  EXPECT_EQ(json.value("frames_corrupt", -1), 0) << run.output;
  EXPECT_EQ(json.value("payload_bytes", -1), 256) << run.output;
  EXPECT_EQ(json.value("peer_lost", true), false) << run.output;
  ASSERT_TRUE(json.contains("rtt_us") && json["rtt_us"].is_object()) << run.output;
  for (const char* key : {"p50", "p99", "max"}) {
    EXPECT_TRUE(json["rtt_us"].contains(key) && json["rtt_us"][key].is_number()) << key << ": " << run.output;
  }
  EXPECT_TRUE(json["seconds"].is_number() && json["frames_per_second"].is_number()) << run.output;
  // The documented order of the fields, as the hand-written JSON had them.
  EXPECT_EQ(run.output.rfind("{\"ok\": true, \"frames_sent\": ", 0), 0u) << run.output;
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
  EXPECT_NE(run.output.find("Usage: troupe"), std::string::npos) << run.output;
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
  Json json = ParseJsonLine(run.output);
  EXPECT_EQ(json.value("file", ""), file.path()) << run.output;
  EXPECT_EQ(json.value("valid", true), false) << run.output;
  ASSERT_TRUE(json.contains("errors") && json["errors"].is_array()) << run.output;
  auto error_for = [&](const std::string& field) -> Json {
    for (const auto& e : json["errors"]) {
      if (e.value("field", "") == field) return e;
    }
    ADD_FAILURE() << "no error for " << field << ": " << run.output;
    return Json::object();
  };
  Json unknown = error_for("cluster.tokn");
  EXPECT_EQ(unknown.value("line", -1), 3) << run.output;
  EXPECT_EQ(unknown.value("column", -1), 3) << run.output;
  EXPECT_EQ(unknown.value("message", "").rfind("unknown key", 0), 0u) << run.output;
  EXPECT_EQ(error_for("cluster.token").value("message", "").rfind("missing", 0), 0u) << run.output;

  CliRun ok = RunTroupe({"check", "--json", "-c", TROUPE_SOURCE_DIR "/configs/local.yaml"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  Json valid = ParseJsonLine(ok.output);
  EXPECT_EQ(valid.value("valid", false), true) << ok.output;
  EXPECT_EQ(valid["errors"], Json::array()) << ok.output;
}

TEST(TroupeCli, CheckWithoutAFileOrWithAMissingOneExitsTwo) {
  CliRun none = RunTroupe({"check"});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.output.find("troupe check: --config is required"), std::string::npos) << none.output;
  CliRun missing = RunTroupe({"check", "-c", "/no/such/cluster.yaml"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.output.find("/no/such/cluster.yaml: (file): cannot read"), std::string::npos) << missing.output;
}

// ---- the command line (CLI11) ----

// Every command and flags that its --help must list.
const std::vector<std::pair<std::string, std::vector<std::string>>> kCommandFlags = {
    {"up", {"-c,--config", "--log-level"}},
    {"down", {"-c,--config"}},
    {"status", {"-c,--config", "--json", "--head", "--log-level"}},
    {"slices", {"-c,--config", "--json", "--head", "--log-level"}},
    {"events", {"-c,--config", "--json", "--head", "--log-level"}},
    {"run",
     {"-c,--config", "--memory", "--compute", "--cpus", "--tenant", "--priority", "--policy", "--timeout", "--head",
      "--log-level", "-- CMD [ARGS...]"}},
    {"check", {"-c,--config", "--json"}},
    {"head", {"-c,--config", "--log-level"}},
    {"node", {"-c,--config", "--name", "--head", "--log-level"}},
    {"demo", {"--frames", "--size", "--tls", "--json", "--log-level"}},
};

TEST(TroupeCli, EveryCommandHasHelpListingItsFlags) {
  CliRun top = RunTroupe({"--help"});
  EXPECT_EQ(top.exit_code, 0) << top.output;
  for (const auto& [command, flags] : kCommandFlags) {
    EXPECT_NE(top.output.find("\n  " + command + " "), std::string::npos) << command << " is listed: " << top.output;
    CliRun help = RunTroupe({command, "--help"});
    EXPECT_EQ(help.exit_code, 0) << command << ": " << help.output;
    EXPECT_NE(help.output.find("Usage: troupe " + command), std::string::npos) << help.output;
    for (const auto& flag : flags) {
      EXPECT_NE(help.output.find(flag), std::string::npos) << "troupe " << command << " --help lacks " << flag << ":\n"
                                                           << help.output;
    }
    CliRun via_help = RunTroupe({"help", command});
    EXPECT_EQ(via_help.exit_code, 0) << via_help.output;
    EXPECT_EQ(via_help.output, help.output) << "troupe help " << command;
  }
  // Flags of one command are not offered by another.
  EXPECT_EQ(RunTroupe({"down", "--help"}).output.find("--json"), std::string::npos);
  EXPECT_EQ(RunTroupe({"status", "--help"}).output.find("--memory"), std::string::npos);
}

TEST(TroupeCli, AnUnknownFlagIsNamedWithExitTwo) {
  for (const auto& [command, flags] : kCommandFlags) {
    std::vector<std::string> args = {command};
    if (command != "demo") args.insert(args.end(), {"-c", "/no/such/cluster.yaml"});
    args.push_back("--bogus-flag");
    if (command == "run") args.insert(args.end(), {"--", "true"});
    CliRun run = RunTroupe(args);
    EXPECT_EQ(run.exit_code, 2) << command << ": " << run.output;
    EXPECT_NE(run.output.find("troupe " + command + ": "), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("--bogus-flag"), std::string::npos) << run.output;
  }
}

TEST(TroupeCli, ABadValueIsRefusedNamingTheFlagBeforeAnythingStarts) {
  // The file does not exist: these errors come from the flags, before the config is read.
  const std::string config = "/no/such/cluster.yaml";
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"run", "-c", config, "--memory", "4Gx", "--", "true"}, "troupe run: --memory: unknown size unit 'Gx'"},
      {{"run", "-c", config, "--compute", "101", "--", "true"}, "troupe run: --compute: '101' is not a whole number in 0..100"},
      {{"run", "-c", config, "--cpus", "-1", "--", "true"}, "troupe run: --cpus: '-1' is not a whole number"},
      {{"run", "-c", config, "--priority", "high", "--", "true"}, "troupe run: --priority: priority 'high'"},
      {{"run", "-c", config, "--policy", "scatter", "--", "true"}, "troupe run: --policy: placement policy 'scatter'"},
      {{"run", "-c", config, "--timeout", ".s", "--", "true"}, "troupe run: --timeout: "},
      {{"status", "-c", config, "--log-level", "loud"}, "troupe status: --log-level: unknown log level 'loud'"},
      {{"node", "-c", config}, "troupe node: --name is required"},
      {{"status", "-c"}, "troupe status: --config"},
      {{"demo", "--frames", "0"}, "troupe demo: --frames: '0' is not a whole number in 1..100000000"},
  };
  for (const auto& c : cases) {
    CliRun run = RunTroupe(c.args);
    EXPECT_EQ(run.exit_code, 2) << c.args[0] << " " << c.args[c.args.size() - 1] << ": " << run.output;
    EXPECT_NE(run.output.find(c.message), std::string::npos) << "expected \"" << c.message << "\" in: " << run.output;
    EXPECT_EQ(run.output.find("cannot read"), std::string::npos) << "the config was read: " << run.output;
  }
}

TEST(TroupeCli, RunWithoutACommandAfterDashDashIsAClearError) {
  const std::string config = TROUPE_SOURCE_DIR "/configs/local.yaml";
  const std::string expected = "troupe run: give the command after --, e.g. troupe run -c FILE";
  for (const auto& args : std::vector<std::vector<std::string>>{{"run", "-c", config, "--memory", "4GiB"},
                                                                {"run", "-c", config, "--memory", "4GiB", "--"},
                                                                {"run", "-c", config, "python", "train.py"}}) {
    CliRun run = RunTroupe(args);
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find(expected), std::string::npos) << run.output;
  }
  CliRun stray = RunTroupe({"run", "-c", config, "python", "--", "train.py"});
  EXPECT_EQ(stray.exit_code, 2) << stray.output;
  EXPECT_NE(stray.output.find("('python' came before --)"), std::string::npos) << stray.output;
  // Only troupe run takes a command after --.
  CliRun status = RunTroupe({"status", "-c", config, "--", "ls"});
  EXPECT_EQ(status.exit_code, 2) << status.output;
  EXPECT_NE(status.output.find("troupe status: unexpected '--'"), std::string::npos) << status.output;
}

TEST(TroupeCli, WithoutACommandPrintsUsageAndExitsTwo) {
  CliRun none = RunTroupe({});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.output.find("Usage: troupe"), std::string::npos) << none.output;
  CliRun help = RunTroupe({"help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_EQ(help.output, none.output);
}

}  // namespace
}  // namespace troupe
