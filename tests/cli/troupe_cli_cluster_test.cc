// The --json of `troupe status`, `troupe slices` and `troupe events` against a real local cluster
// (`troupe up`, simulated GPUs), parsed with nlohmann::json: the shapes docs/cli.md documents.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/child_process.h"
#include "tests/support/troupe_processes.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

// Records a failure unless `object` has `key` of the JSON type `type`.
void ExpectField(const Json& object, const std::string& key, Json::value_t type) {
  auto it = object.find(key);
  ASSERT_NE(it, object.end()) << "no \"" << key << "\" in " << object.dump();
  if (type == Json::value_t::number_integer) {
    EXPECT_TRUE(it->is_number_integer()) << key << " is a whole number: " << object.dump();
  } else if (type == Json::value_t::number_float) {
    EXPECT_TRUE(it->is_number()) << key << " is a number: " << object.dump();
  } else {
    EXPECT_EQ(it->type(), type) << key << ": " << object.dump();
  }
}

class CliCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-cli-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    config_ = dir_ + "/cluster.yaml";
    // Node a has 4 slices and b 2, so a field read from the wrong node's record shows.
    std::ofstream(config_) << "cluster:\n  name: cli\n  token: cli-test-token\n  log_level: warn\n"
                              "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                              "nodes:\n"
                              "  - name: a\n    cpus: 4\n    memory: 8GiB\n"
                              "    gpus:\n      simulated:\n        - memory: 16GiB\n    slice_memory: 4GiB\n"
                              "  - name: b\n    cpus: 2\n    memory: 4GiB\n"
                              "    gpus:\n      simulated:\n        - memory: 8GiB\n    slice_memory: 4GiB\n";
    auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_});
    ASSERT_TRUE(up.ok()) << up.status();
    up_ = std::move(*up);
    auto line = up_->ReadLineWithPrefix("cluster cli up", 60s);
    ASSERT_TRUE(line.ok()) << "troupe up did not come up: " << line.status();
  }
  void TearDown() override {
    if (up_) {
      up_->Signal(SIGTERM);
      (void)up_->Wait(30s);
    }
    std::filesystem::remove_all(dir_);
  }

  // The one line `troupe <command> -c FILE --json` prints, parsed (null if it is not JSON).
  Json RunJson(const std::string& command, std::string* text = nullptr) {
    std::string line = testing::FirstLine({TROUPE_BIN, command, "-c", config_, "--json"});
    if (text) *text = line;
    Json json = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(json.is_discarded()) << "troupe " << command << " --json printed: " << line;
    return json.is_discarded() ? Json() : json;
  }

  std::string dir_;
  std::string config_;
  std::unique_ptr<ChildProcess> up_;
};

TEST_F(CliCluster, StatusJsonHasTheDocumentedShape) {
  std::string text;
  Json status = RunJson("status", &text);
  ASSERT_TRUE(status.is_object()) << text;
  EXPECT_EQ(text.rfind("{\"cluster\": \"cli\", \"head\": ", 0), 0u) << "documented order and spacing: " << text;
  EXPECT_EQ(status.value("cluster", ""), "cli");
  ExpectField(status, "head", Json::value_t::string);
  ASSERT_TRUE(status["nodes"].is_array()) << text;
  ASSERT_EQ(status["nodes"].size(), 2u) << text;
  for (const auto& node : status["nodes"]) {
    ExpectField(node, "name", Json::value_t::string);
    ExpectField(node, "node_id", Json::value_t::number_unsigned);
    ExpectField(node, "state", Json::value_t::string);
    ExpectField(node, "address", Json::value_t::string);
    for (const char* key : {"pid", "cpus", "memory_bytes", "slice_memory_bytes", "slices_total", "slices_free", "joins",
                            "heartbeat_age_ms"}) {
      ExpectField(node, key, Json::value_t::number_integer);
    }
    ExpectField(node, "reason", Json::value_t::string);
    ASSERT_TRUE(node["gpus"].is_array() && node["gpus"].size() == 1) << node.dump();
    ExpectField(node["gpus"][0], "name", Json::value_t::string);
    ExpectField(node["gpus"][0], "memory_bytes", Json::value_t::number_integer);
    EXPECT_EQ(node["gpus"][0].value("simulated", false), true) << node.dump();
    EXPECT_EQ(node.value("state", ""), "alive") << node.dump();
  }
  // NodeField reads each node's own record, not the next one's.
  EXPECT_EQ(testing::NodeField(text, "a", "slices_total"), "4") << text;
  EXPECT_EQ(testing::NodeField(text, "b", "slices_total"), "2") << text;
  EXPECT_EQ(testing::NodeField(text, "b", "cpus"), "2") << text;
  EXPECT_EQ(testing::NodeField(text, "a", "state"), "alive") << text;
  EXPECT_EQ(testing::NodeField(text, "c", "state"), "") << text;
  EXPECT_EQ(testing::NodeField(text, "a", "no_such_field"), "") << text;
  EXPECT_EQ(testing::NodeField("not json", "a", "state"), "");
}

TEST_F(CliCluster, SlicesJsonShowsALeaseWhileItsCommandRuns) {
  // The command on the slice is `troupe slices --json` itself: it prints while the lease holds.
  auto run = ChildProcess::Spawn(
      {TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--tenant", "t1", "--", TROUPE_BIN, "slices", "-c",
       config_, "--json"});
  ASSERT_TRUE(run.ok()) << run.status();
  auto line = (*run)->ReadLine(60s);
  ASSERT_TRUE(line.ok()) << line.status();
  auto exit = (*run)->Wait(60s);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit) && WEXITSTATUS(*exit) == 0) << *line;

  Json slices = Json::parse(*line, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(slices.is_object()) << *line;
  ASSERT_TRUE(slices["gpus"].is_array() && slices["gpus"].size() == 2) << *line;
  ASSERT_TRUE(slices["pending"].is_array()) << *line;
  int leases = 0;
  for (const auto& gpu : slices["gpus"]) {
    for (const char* key : {"node", "node_state", "name", "uuid"}) ExpectField(gpu, key, Json::value_t::string);
    for (const char* key : {"index", "memory_bytes", "slice_memory_bytes", "slices_total", "slices_free",
                            "free_memory_bytes", "memory_used_bytes"}) {
      ExpectField(gpu, key, Json::value_t::number_integer);
    }
    ExpectField(gpu, "utilisation", Json::value_t::number_float);
    ExpectField(gpu, "simulated", Json::value_t::boolean);
    ASSERT_TRUE(gpu["leases"].is_array()) << *line;
    for (const auto& lease : gpu["leases"]) {
      ++leases;
      ExpectField(lease, "lease_id", Json::value_t::number_integer);
      EXPECT_EQ(lease.value("tenant", ""), "t1") << *line;
      ExpectField(lease, "owner", Json::value_t::string);
      EXPECT_EQ(lease.value("slices", 0), 1) << *line;
      EXPECT_EQ(gpu.value("slices_free", 0) + 1, gpu.value("slices_total", 0)) << *line;
    }
  }
  EXPECT_EQ(leases, 1) << *line;

  // Once the command is gone the lease is released.
  Json after = RunJson("slices");
  ASSERT_TRUE(after["gpus"].is_array()) << after.dump();
  for (const auto& gpu : after["gpus"]) EXPECT_EQ(gpu["leases"], Json::array()) << after.dump();
}

TEST_F(CliCluster, EventsJsonIsAnObjectWithAnEventList) {
  std::string text;
  Json events = RunJson("events", &text);
  ASSERT_TRUE(events.is_object()) << text;
  ASSERT_TRUE(events["events"].is_array()) << text;
  for (const auto& e : events["events"]) {
    for (const char* key : {"supervisor", "child", "kind", "reason"}) ExpectField(e, key, Json::value_t::string);
    for (const char* key : {"node", "unix_ms", "restarts"}) ExpectField(e, key, Json::value_t::number_integer);
  }
}

}  // namespace
}  // namespace troupe
