// The head's audit log with real `troupe head`, `troupe node` and CLI processes: the admin
// actions done through the CLI (a deployment deployed and scaled, a refused delete, a job
// submitted) and one sent by an older sender naming no caller are listed by `troupe audit --json` with who did them and how they ended, the chain
// verifies, it still does after kill -9 of the head and a restart, and a record edited in the
// head's LMDB file while the head is down is named by its position.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cluster/audit_log.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "storage/lmdb_env.h"
#include "storage/table.h"
#include "tests/support/troupe_processes.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

// What a CLI command printed on stdout (stderr merged) and its exit code (-1: killed).
struct CliResult {
  int code = -1;
  std::string out;
};

class Audit : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-audit-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    config_ = dir_ + "/cluster.yaml";
    std::ofstream(config_) << "cluster:\n  name: audit\n  token: audit-test-token\n  log_level: warn\n"
                              "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                              "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                              "nodes:\n  - name: a\n    cpus: 4\n    memory: 4GiB\n    data_dir: node-a\n";
    std::ofstream(dir_ + "/echo.yaml") << "name: echo\nversions:\n  - name: v1\n    backend: {test: {}}\n"
                                          "replicas: {min: 1, max: 1, initial: 1}\n";
    std::ofstream(dir_ + "/job.yaml") << "name: audjob\nworkers: 1\nentry:\n  command: [sh, -c, \"exit 0\"]\n";
  }
  void TearDown() override {
    for (auto* p : {&node_, &head_}) {
      if (*p) {
        (*p)->Signal(SIGKILL);
        (void)(*p)->Wait(10s);
      }
    }
    std::filesystem::remove_all(dir_);
  }

  void StartHead() {
    head_ = testing::StartUntilReady({TROUPE_BIN, "head", "-c", config_}, "READY ");
    ASSERT_TRUE(head_);
  }
  void KillHead() {
    head_->Signal(SIGKILL);
    ASSERT_TRUE(head_->Wait(10s).ok());
    head_.reset();
  }

  // Runs `troupe ARGS -c FILE` to its end (60 s at most).
  CliResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), TROUPE_BIN);
    args.insert(args.end(), {"-c", config_});
    CliResult result;
    auto child = ChildProcess::Spawn(args, {}, /*merge_stderr=*/true);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return result;
    for (;;) {
      auto line = (*child)->ReadLine(60s);
      if (!line.ok()) break;  // end of output
      result.out += *line + "\n";
    }
    auto code = (*child)->Wait(60s);
    EXPECT_TRUE(code.ok()) << code.status();
    result.code = code.ok() && WIFEXITED(*code) ? WEXITSTATUS(*code) : -1;
    return result;
  }

  // `troupe audit --json` as JSON (its records and, with `verify`, the verification).
  Json AuditJson(bool verify) {
    CliResult r = verify ? Cli({"audit", "--json", "--verify"}) : Cli({"audit", "--json"});
    Json j = Json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j.is_discarded() ? Json{{"records", Json::array()}} : j;
  }

  std::string dir_, config_;
  std::unique_ptr<ChildProcess> head_, node_;
};

TEST_F(Audit, CliActionsAreRecordedVerifiedAfterKillAndAnEditedRecordIsNamed) {
  ASSERT_NO_FATAL_FAILURE(StartHead());
  node_ = testing::StartUntilReady({TROUPE_BIN, "node", "--name", "a", "-c", config_}, "JOINED ");
  ASSERT_TRUE(node_);

  CliResult deployed = Cli({"serve", "deploy", dir_ + "/echo.yaml"});
  ASSERT_EQ(deployed.code, 0) << deployed.out;
  CliResult scaled = Cli({"serve", "scale", "echo", "2"});
  ASSERT_EQ(scaled.code, 0) << scaled.out;
  CliResult refused = Cli({"serve", "delete", "nope"});
  ASSERT_NE(refused.code, 0) << refused.out;
  CliResult submitted = Cli({"job", "submit", dir_ + "/job.yaml"});
  ASSERT_EQ(submitted.code, 0) << submitted.out;
  CliResult listed = Cli({"serve", "list"});  // changes nothing: not recorded
  ASSERT_EQ(listed.code, 0) << listed.out;

  Json j = AuditJson(/*verify=*/true);
  const Json& records = j["records"];
  ASSERT_EQ(records.size(), 4u) << j.dump();
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"deployment.deploy", "echo"}, {"deployment.scale", "echo"}, {"deployment.delete", "nope"}, {"job.submit", "audjob"}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const Json& r = records[i];
    EXPECT_EQ(r.value("seq", 0u), i + 1) << r.dump();
    EXPECT_EQ(r.value("action", ""), expected[i].first) << r.dump();
    EXPECT_EQ(r.value("target", ""), expected[i].second) << r.dump();
    EXPECT_EQ(r.value("who", "").rfind("cli@", 0), 0u) << r.dump();
    EXPECT_GT(r.value("at_unix_ms", int64_t{0}), 0) << r.dump();
  }
  EXPECT_EQ(records[0].value("result", ""), "ok");
  EXPECT_EQ(records[0].value("detail", "").rfind(R"({"spec_sha256":")", 0), 0u) << records[0].dump();
  EXPECT_EQ(records[1].value("detail", ""), R"({"replicas":2})");
  EXPECT_NE(records[2].value("result", "").find("nope"), std::string::npos) << records[2].dump();
  EXPECT_NE(records[2].value("result", ""), "ok");
  EXPECT_EQ(records[3].value("result", ""), "ok");
  EXPECT_TRUE(j["verification"].value("ok", false)) << j.dump();

  CliResult table = Cli({"audit", "--verify"});
  EXPECT_EQ(table.code, 0) << table.out;
  EXPECT_NE(table.out.find("deployment.scale"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("chain verified: 4 records"), std::string::npos) << table.out;

  // A command that names no caller (an older sender's): recorded as the cluster token's.
  {
    auto config = cluster::LoadClusterConfig(config_);
    ASSERT_TRUE(config.ok()) << config.status();
    auto client = cluster::Client::Connect(*config, "", 10s);
    ASSERT_TRUE(client.ok()) << client.status();
    auto reply = (*client)->head().Request<serving::DeploymentCommandReply>(
        serving::DeploymentCommand{"scale", "echo", "2"}, 10s);
    ASSERT_TRUE(reply.ok()) << reply.status();
  }
  j = AuditJson(/*verify=*/false);
  ASSERT_EQ(j["records"].size(), 5u) << j.dump();
  EXPECT_EQ(j["records"][4].value("who", ""), "cluster-token") << j["records"][4].dump();
  EXPECT_TRUE(j["verification"].is_null()) << j.dump();

  // kill -9 of the head, then a restart: the chain still verifies and goes on from record 4.
  ASSERT_NO_FATAL_FAILURE(KillHead());
  ASSERT_NO_FATAL_FAILURE(StartHead());
  CliResult again = Cli({"serve", "scale", "echo", "1"});
  ASSERT_EQ(again.code, 0) << again.out;
  j = AuditJson(/*verify=*/true);
  ASSERT_EQ(j["records"].size(), 6u) << j.dump();
  EXPECT_EQ(j["records"][5].value("prev_hash", ""), j["records"][4].value("hash", ""));
  EXPECT_TRUE(j["verification"].value("ok", false)) << j.dump();

  // Record 2 edited in the head's LMDB file while the head is down: --verify names it.
  ASSERT_NO_FATAL_FAILURE(KillHead());
  {
    storage::LmdbOptions options;
    options.path = dir_ + "/head";
    options.map_size = uint64_t{256} << 20;  // the head's (cluster/head.cc)
    auto env = storage::LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status();
    auto table = (*env)->OpenTable("audit");
    ASSERT_TRUE(table.ok()) << table.status();
    auto txn = (*env)->BeginWrite();
    ASSERT_TRUE(txn.ok()) << txn.status();
    const std::string key = storage::KeyCodec<uint64_t>::Encode(2);
    auto bytes = txn->Get(*table, key);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto record = cluster::DecodeAuditRecord(*bytes);
    ASSERT_TRUE(record.ok()) << record.status();
    record->detail = R"({"replicas":20})";
    ASSERT_TRUE(txn->Put(*table, key, cluster::EncodeAuditRecord(*record)).ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  ASSERT_NO_FATAL_FAILURE(StartHead());
  CliResult broken = Cli({"audit", "--verify"});
  EXPECT_EQ(broken.code, 1) << broken.out;
  EXPECT_NE(broken.out.find("record 2 changed: its contents do not match its hash"), std::string::npos) << broken.out;
  j = AuditJson(/*verify=*/true);
  EXPECT_FALSE(j["verification"].value("ok", true)) << j.dump();
  EXPECT_EQ(j["verification"].value("position", 0u), 2u) << j.dump();
}

}  // namespace
}  // namespace troupe
