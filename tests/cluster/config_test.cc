// Cluster config parsing: the shipped files load, and every kind of bad input is refused with
// file, line, field and what was expected.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cluster/config.h"

namespace troupe::cluster {
namespace {

constexpr const char* kMinimal = R"(cluster:
  name: test
  token: secret-token
nodes:
  - name: a
    cpus: 2
    memory: 1GiB
)";

Status ParseError(const std::string& yaml) {
  auto config = ParseClusterConfig(yaml, "test.yaml");
  return config.ok() ? OkStatus() : config.status();
}

void ExpectError(const std::string& yaml, const std::string& where, const std::string& what) {
  Status s = ParseError(yaml);
  ASSERT_FALSE(s.ok()) << "accepted:\n" << yaml;
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(where), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
}

TEST(ClusterConfig, TheShippedFilesLoad) {
  auto local = LoadClusterConfig(TROUPE_SOURCE_DIR "/configs/local.yaml");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->name, "local");
  ASSERT_EQ(local->nodes.size(), 2u);
  EXPECT_EQ(local->nodes[0].gpu_mode, "simulated");
  ASSERT_EQ(local->nodes[0].simulated_gpus.size(), 2u);
  EXPECT_EQ(local->nodes[0].simulated_gpus[0].memory_bytes, 16ull << 30);
  EXPECT_EQ(local->nodes[0].slice_memory_bytes, 4ull << 30);
  EXPECT_EQ(local->failure_timeout, std::chrono::milliseconds(1000));
  EXPECT_EQ(local->head.port, 7400);
  // multi-host.yaml reads its token from a file that exists only on real hosts.
  auto multi = LoadClusterConfig(TROUPE_SOURCE_DIR "/configs/multi-host.yaml");
  ASSERT_FALSE(multi.ok());
  EXPECT_NE(multi.status().message().find("cluster.token_file"), std::string::npos) << multi.status();
}

TEST(ClusterConfig, DefaultsFillWhatIsLeftOut) {
  auto c = ParseClusterConfig(kMinimal, "min.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->heartbeat_interval, std::chrono::milliseconds(100));
  EXPECT_EQ(c->backfill_limit, std::chrono::seconds(60));
  EXPECT_EQ(c->nodes[0].listen_address, "127.0.0.1:0");
  auto strict = ParseClusterConfig(std::string(kMinimal) + "scheduler:\n  backfill_limit: 0s\n", "strict.yaml");
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_EQ(strict->backfill_limit, std::chrono::milliseconds(0));
  EXPECT_EQ(c->nodes[0].gpu_mode, "none");
  EXPECT_EQ(c->nodes[0].memory_bytes, 1ull << 30);
  EXPECT_NE(c->FindNode("a"), nullptr);
  EXPECT_EQ(c->FindNode("b"), nullptr);
}

TEST(ClusterConfig, TokenFromAFileRelativeToTheConfig) {
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-cfg-XXXXXX").string();
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  std::ofstream(templ + "/token.txt") << "file-secret-token\n";
  std::ofstream(templ + "/c.yaml") << "cluster:\n  name: t\n  token_file: token.txt\n";
  auto c = LoadClusterConfig(templ + "/c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->token, "file-secret-token");
  std::filesystem::remove_all(templ);
}

TEST(ClusterConfig, BadInputIsRefusedWithFileLineFieldAndExpectation) {
  ExpectError("cluster:\n  name: t\n  tokn: x\n", "test.yaml:3:3: cluster.tokn", "unknown key");
  ExpectError("cluster:\n  name: t\n", "cluster.token", "missing");
  ExpectError("cluster:\n  name: t\n  token: short\n", "cluster.token", "too short");
  ExpectError(std::string(kMinimal) + "    cpus2: 1\n", "nodes[0].cpus2", "unknown key");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    cpus: many\n",
              "test.yaml:6:11: nodes[a].cpus", "expected a whole number");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    memory: lots\n",
              "nodes[a].memory", "expected a size");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    memory: 8 parsecs\n",
              "nodes[a].memory", "unknown size unit");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  failure_timeout: 5\n", "cluster.failure_timeout",
              "unknown duration unit");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  heartbeat_interval: 2s\n  failure_timeout: 1s\n",
              "cluster.failure_timeout", "longer than heartbeat_interval");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nhead:\n  port: 70000\n", "head.port", "at most 65535");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n  - name: a\n", "nodes[1].name",
              "used twice");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus: many\n", "nodes[a].gpus",
              "expected auto, none");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus:\n      simulated:\n"
              "        - memory: 4GiB\n    slice_memory: 8GiB\n",
              "nodes[a].slice_memory", "larger than GPU sim-0");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    listen: 7401\n", "nodes[a].listen",
              "expected host:port");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  log_level: loud\n", "cluster.log_level", "expected one of");
  ExpectError(std::string(kMinimal) + "scheduler:\n  backfill_limit: soon\n", "scheduler.backfill_limit",
              "duration");
  ExpectError("cluster: [1, 2\n", "test.yaml:", "not valid YAML");
  ExpectError("", "test.yaml", "empty");
  ExpectError("nodes: 3\ncluster:\n  name: t\n  token: secret-token\n", "nodes", "expected a list");
  auto missing = LoadClusterConfig("/no/such/cluster.yaml");
  EXPECT_NE(missing.status().message().find("/no/such/cluster.yaml"), std::string::npos);
}

TEST(ClusterConfig, APortInUseIsFoundBeforeAnythingStarts) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  auto c = ParseClusterConfig("cluster:\n  name: t\n  token: secret-token\nhead:\n  port: " + std::to_string(port) + "\n",
                              "ports.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  Status s = CheckPortsFree(*c, true);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("head.port: 127.0.0.1:" + std::to_string(port) + " is already in use"), std::string::npos)
      << s;
  close(fd);
  EXPECT_TRUE(CheckPortsFree(*c, true).ok());
}

TEST(ClusterConfig, SizesAndDurations) {
  EXPECT_EQ(*ParseSize("8GiB"), 8ull << 30);
  EXPECT_EQ(*ParseSize("1.5GB"), 1500000000ull);
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("512MiB"), 512ull << 20);
  EXPECT_FALSE(ParseSize("GiB").ok());
  EXPECT_EQ(*ParseDuration("100ms"), std::chrono::milliseconds(100));
  EXPECT_EQ(*ParseDuration("1.5s"), std::chrono::milliseconds(1500));
  EXPECT_EQ(*ParseDuration("2m"), std::chrono::milliseconds(120000));
  EXPECT_EQ(*ParseDuration("10us"), std::chrono::milliseconds(1));
  EXPECT_FALSE(ParseDuration("fast").ok());
}

}  // namespace
}  // namespace troupe::cluster
