// Cluster config parsing: the shipped files load, and every kind of bad input is refused with
// file, line, field and what was expected.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "cluster/config.h"
#include "cluster/node_agent.h"

namespace troupe::cluster {
namespace {

// A socket listening on 127.0.0.1 at a free port (written to *port), which holds the port until
// closed; -1 if it cannot.
int ListenOnLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 1) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

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

TEST(ClusterConfig, ANodeSharesTheHeadsCheckpointsUnlessItSaysSend) {
  auto c = ParseClusterConfig(std::string(kMinimal) + "  - name: b\n    checkpoints: send\n", "send.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->FindNode("a")->checkpoints, "shared");
  EXPECT_EQ(c->FindNode("b")->checkpoints, "send");
  ExpectError(std::string(kMinimal) + "    checkpoints: nfs\n", "nodes[a].checkpoints", "expected one of");
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
  int port = 0;
  const int fd = ListenOnLoopback(&port);
  ASSERT_GE(fd, 0) << "cannot listen on 127.0.0.1";
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

TEST(ClusterConfig, ADuplicatedKeyIsRefusedNamingBothLines) {
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    cpus: 4\n    cpus: 64\n",
              "test.yaml:7:5: nodes[0].cpus", "given twice, on line 6 and line 7");
  ExpectError("cluster:\n  name: t\n  token: secret-token\ncluster:\n  name: u\n", "test.yaml:4:1: cluster",
              "given twice, on line 1 and line 4");
  ExpectError(std::string(kMinimal) + "scheduler:\n  quotas:\n    team: 8GiB\n    team: 16GiB\n",
              "test.yaml:11:5: scheduler.quotas.team", "given twice, on line 10 and line 11");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nhead:\n  port: 7400\n  port: 7401\n", "head.port",
              "given twice");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus:\n      simulated:\n"
              "        - memory: 4GiB\n          memory: 8GiB\n",
              "nodes[a].gpus.simulated[0].memory", "given twice");
}

TEST(ClusterConfig, MalformedNumbersAreRefusedNotThrown) {
  for (const char* bad : {".", ".s", ".tr", "...", "1..5s", "1.2.3s", "-1s", "1e3s", "0x10s", "nans", "infs", ""}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(ParseDuration(bad).ok());
  }
  for (const char* bad : {".", "..GiB", "1.2.3GiB", "-1", "1e3", "0x10", "inf", "nan", ".MiB"}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(ParseSize(bad).ok());
  }
  EXPECT_EQ(*ParseSize(".5KiB"), 512u);
  EXPECT_EQ(*ParseDuration("2.s"), std::chrono::milliseconds(2000));
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  failure_timeout: .s\n", "test.yaml:4:20: cluster.failure_timeout",
              "expected a duration");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  heartbeat_interval: .tr\n", "cluster.heartbeat_interval",
              "expected a duration");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  failure_timeout: ...\n", "cluster.failure_timeout",
              "expected a duration");
}

TEST(ClusterConfig, SizesThatWouldWrapAreRefused) {
  EXPECT_FALSE(ParseSize("18446744073709551616").ok());
  EXPECT_FALSE(ParseSize("16384PiB").ok());
  EXPECT_FALSE(ParseSize("17179869184GiB").ok());
  EXPECT_FALSE(ParseSize(std::string(400, '9')).ok());
  EXPECT_EQ(*ParseSize("9223372036854775808"), 9223372036854775808ull);  // 2^63 does not go through a signed type
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    memory: 17179869184GiB\n",
              "nodes[a].memory", "too large");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    memory: 2PiB\n",
              "nodes[a].memory", "unknown size unit");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    memory: 2048TiB\n",
              "nodes[a].memory", "must be at most 1PiB");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    cpus: 99999999999999999999999\n",
              "nodes[a].cpus", "expected a whole number");
  ExpectError("cluster:\n  name: t\n  token: secret-token\nhead:\n  port: 18446744073709551617\n", "head.port",
              "at most 65535");
}

TEST(ClusterConfig, DurationsHaveAnUpperBound) {
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  heartbeat_interval: 2m\n  failure_timeout: 5m\n",
              "cluster.heartbeat_interval", "must be at most 1m");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  failure_timeout: 10000000h\n", "cluster.failure_timeout",
              "too long");
  ExpectError("cluster:\n  name: t\n  token: secret-token\n  failure_timeout: 11m\n", "cluster.failure_timeout",
              "must be at most 10m");
  ExpectError(std::string(kMinimal) + "scheduler:\n  backfill_limit: 25h\n", "scheduler.backfill_limit",
              "must be at most 24h");
  auto edge = ParseClusterConfig(std::string("cluster:\n  name: t\n  token: secret-token\n  heartbeat_interval: 1m\n"
                                             "  failure_timeout: 10m\nscheduler:\n  backfill_limit: 24h\n"),
                                 "edge.yaml");
  EXPECT_TRUE(edge.ok()) << edge.status();
}

TEST(ClusterConfig, TooManySlicesPerGpuAreRefusedWithWhatToWriteInstead) {
  ExpectError("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus:\n      simulated:\n"
              "        - memory: 24GiB\n    slice_memory: 4096\n",
              "nodes[a].slice_memory",
              "would make 6291456 slices of GPU sim-0 (24GiB); at most 1024: use slice_memory of at least 24MiB, "
              "e.g. 1GiB");
  auto at_cap = ParseClusterConfig("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus:\n"
                                   "      simulated:\n        - memory: 24GiB\n    slice_memory: 24MiB\n",
                                   "cap.yaml");
  EXPECT_TRUE(at_cap.ok()) << at_cap.status();
  EXPECT_TRUE(CheckSliceCount("gpu", 80ull << 30, 80ull << 20).ok());
  EXPECT_FALSE(CheckSliceCount("gpu", 80ull << 30, (80ull << 30) / 1025).ok());
  EXPECT_TRUE(CheckSliceCount("gpu", 80ull << 30, 0).ok());
  EXPECT_EQ(SliceSize(16ull << 30, 0), 16ull << 30);
  EXPECT_EQ(SliceSize(16ull << 30, 4ull << 30), 4ull << 30);
}

TEST(ClusterConfig, OneSliceCountRuleCoversWholeGpusOversizedSlicesAndTheCap) {
  EXPECT_EQ(SliceCount(80ull << 30, 10ull << 30), 8u);
  EXPECT_EQ(SliceCount(80ull << 30, 30ull << 30), 2u);  // the remainder is no slice
  EXPECT_EQ(SliceCount(80ull << 30, 0), 1u);            // whole GPUs
  EXPECT_EQ(SliceCount(16ull << 30, 32ull << 30), 1u);  // a slice larger than the GPU: the GPU
  EXPECT_EQ(SliceCount(0, 1ull << 30), 0u);
  EXPECT_EQ(SliceCount(80ull << 30, 80ull << 20), kMaxSlicesPerGpu);
  // Over the cap a GPU offers nothing (CheckSliceCount says why) rather than millions of slices.
  EXPECT_EQ(SliceCount(80ull << 30, (80ull << 30) / 1025), 0u);
  EXPECT_FALSE(CheckSliceCount("gpu", 80ull << 30, (80ull << 30) / 1025).ok());
}

TEST(ClusterConfig, TheGatewaySectionHasDefaultsAndBounds) {
  auto none = ParseClusterConfig(kMinimal, "none.yaml");
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(none->gateway.enabled);
  auto bare = ParseClusterConfig(std::string(kMinimal) + "gateway:\n", "bare.yaml");
  ASSERT_TRUE(bare.ok()) << bare.status().ToString();
  EXPECT_TRUE(bare->gateway.enabled);
  EXPECT_EQ(bare->gateway.listen, "127.0.0.1:0");
  EXPECT_EQ(bare->gateway.max_body_bytes, uint64_t{1} << 20);
  EXPECT_EQ(bare->gateway.prompt_bytes_per_token, 1u);
  auto full = ParseClusterConfig(std::string(kMinimal) +
                                     "gateway:\n  listen: 127.0.0.1:8000\n  max_body: 64KiB\n  read_timeout: 2s\n"
                                     "  prompt_bytes_per_token: 4\n  limits:\n    requests_per_minute: 600\n"
                                     "    tokens_per_minute: 100000\n    max_concurrent: 8\n"
                                     "  audit_retention: 720h\n",
                                 "full.yaml");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(full->gateway.listen, "127.0.0.1:8000");
  EXPECT_EQ(full->gateway.max_body_bytes, uint64_t{64} << 10);
  EXPECT_EQ(full->gateway.read_timeout, std::chrono::seconds(2));
  EXPECT_EQ(full->gateway.prompt_bytes_per_token, 4u);
  EXPECT_EQ(full->gateway.requests_per_minute, 600u);
  EXPECT_EQ(full->gateway.tokens_per_minute, 100000u);
  EXPECT_EQ(full->gateway.max_concurrent, 8u);
  EXPECT_EQ(full->gateway.audit_retention, std::chrono::hours(30 * 24));
  ExpectError(std::string(kMinimal) + "gateway:\n  listen: 8000\n", "gateway.listen", "host:port");
  ExpectError(std::string(kMinimal) + "gateway:\n  listen: 127.0.0.1:70000\n", "gateway.listen", "65535");
  ExpectError(std::string(kMinimal) + "gateway:\n  max_body: 0\n", "gateway.max_body", "positive");
  ExpectError(std::string(kMinimal) + "gateway:\n  prompt_bytes_per_token: 0\n", "gateway.prompt_bytes_per_token",
              "1 to 64");
  ExpectError(std::string(kMinimal) + "gateway:\n  limits:\n    rpm: 5\n", "gateway.limits", "rpm");
  ExpectError(std::string(kMinimal) + "gateway:\n  read_timeout: 2h\n", "gateway.read_timeout", "1h");
}

TEST(ClusterConfig, TheGatewaysHeadRetryBudgetIsThirtySecondsByDefaultAndZeroTurnsItOff) {
  auto bare = ParseClusterConfig(std::string(kMinimal) + "gateway:\n", "bare.yaml");
  ASSERT_TRUE(bare.ok()) << bare.status().ToString();
  EXPECT_EQ(bare->gateway.head_retry_budget, std::chrono::seconds(30));
  auto set = ParseClusterConfig(std::string(kMinimal) + "gateway:\n  head_retry_budget: 5s\n", "set.yaml");
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->gateway.head_retry_budget, std::chrono::seconds(5));
  auto off = ParseClusterConfig(std::string(kMinimal) + "gateway:\n  head_retry_budget: 0s\n", "off.yaml");
  ASSERT_TRUE(off.ok()) << off.status().ToString();
  EXPECT_EQ(off->gateway.head_retry_budget.count(), 0);
  ExpectError(std::string(kMinimal) + "gateway:\n  head_retry_budget: 2h\n", "gateway.head_retry_budget", "1h");
}

TEST(ClusterConfig, ATokenFileIsReadWithASizeLimit) {
  ExpectError("cluster:\n  name: t\n  token_file: /dev/zero\n", "cluster.token_file", "/dev/zero is not a regular file");
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-cfg-XXXXXX").string();
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  // A FIFO nobody writes to would block the loader for ever.
  ASSERT_EQ(mkfifo((templ + "/fifo").c_str(), 0600), 0);
  ExpectError("cluster:\n  name: t\n  token_file: " + templ + "/fifo\n", "cluster.token_file", "is not a regular file");
  std::ofstream(templ + "/long.txt") << std::string(5000, 'x');
  std::ofstream(templ + "/c.yaml") << "cluster:\n  name: t\n  token_file: long.txt\n";
  auto c = LoadClusterConfig(templ + "/c.yaml");
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("long.txt is longer than 4096 bytes"), std::string::npos) << c.status();
  std::filesystem::remove_all(templ);
}

TEST(ClusterConfig, EveryErrorIsReportedOncePerLine) {
  const std::string yaml =
      "cluster:\n  name: t\n  token: secret-token\n  failure_timeout: .s\n  tokn: x\nhead:\n  port: 70000\n"
      "nodes:\n  - name: a\n    cpus: many\n    memory: lots\n  - 3\n  - name: b\n    cpus: 4\n    cpus: 8\n";
  auto errors = ValidateClusterConfigText(yaml, "many.yaml");
  std::vector<std::string> lines;
  for (const auto& e : errors) lines.push_back(e.ToString());
  ASSERT_EQ(lines.size(), 7u) << ::testing::PrintToString(lines);
  EXPECT_EQ(lines[0], "many.yaml:5:3: cluster.tokn: unknown key (expected one of: failure_timeout, heartbeat_interval, "
                      "log_level, name, token, token_file)");
  EXPECT_EQ(errors[1].field, "cluster.failure_timeout");
  EXPECT_EQ(errors[1].line, 4);
  EXPECT_EQ(errors[1].column, 20);
  EXPECT_EQ(errors[2].field, "head.port");
  EXPECT_EQ(errors[3].field, "nodes[a].cpus");
  EXPECT_EQ(errors[4].field, "nodes[a].memory");
  EXPECT_EQ(errors[5].field, "nodes[1]");
  EXPECT_EQ(errors[5].message, "expected a mapping of keys");
  EXPECT_EQ(errors[6].field, "nodes[2].cpus");
  EXPECT_NE(errors[6].message.find("given twice, on line 14 and line 15"), std::string::npos);
  Status s = ParseError(yaml);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(std::count(s.message().begin(), s.message().end(), '\n'), 6) << s.message();
  EXPECT_TRUE(ValidateClusterConfigText(kMinimal, "min.yaml").empty());
}

TEST(ClusterConfig, AFileWithThousandsOfErrorsListsTheFirstHundredAndCountsTheRest) {
  std::string yaml = "cluster:\n  name: t\n  token: secret-token\n";
  for (int i = 0; i < 1000; ++i) yaml += "k" + std::to_string(i) + ": 1\n";
  auto errors = ValidateClusterConfigText(yaml, "noisy.yaml");
  ASSERT_EQ(errors.size(), kMaxConfigErrors + 1);
  EXPECT_EQ(errors[0].field, "k0");
  EXPECT_EQ(errors.back().ToString(), "noisy.yaml: (file): 900 more errors not listed (the first 100 are)");
}

TEST(ClusterConfig, ValidatingAFileReportsAMissingOrHugeFile) {
  auto missing = ValidateClusterConfig("/no/such/cluster.yaml");
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_NE(missing[0].ToString().find("/no/such/cluster.yaml"), std::string::npos);
  auto endless = ValidateClusterConfig("/dev/zero");
  ASSERT_EQ(endless.size(), 1u);
  EXPECT_NE(endless[0].message.find("longer than 1MiB"), std::string::npos) << endless[0].ToString();
  ClusterConfig config;
  EXPECT_TRUE(ValidateClusterConfig(TROUPE_SOURCE_DIR "/configs/local.yaml", &config).empty());
  EXPECT_EQ(config.name, "local");
}

// GPUs found through NVML are seen only by the node agent: it applies the same cap. A config
// built in code (bypassing the file's check) stands in for such a GPU. The node's metrics port
// is taken: a node that started its runtime or metrics server before the check would fail on the
// port instead (and, with an actor system started and stopped at once, upset the TSan pass,
// which cannot see inside Debian's uninstrumented CAF).
TEST(NodeAgentSlices, AGpuCutIntoMoreSlicesThanTheCapStopsTheNodeBeforeAnythingStarts) {
  int port = 0;
  const int fd = ListenOnLoopback(&port);
  ASSERT_GE(fd, 0) << "cannot listen on 127.0.0.1";
  auto c = ParseClusterConfig("cluster:\n  name: t\n  token: secret-token\nnodes:\n  - name: a\n    gpus:\n"
                              "      simulated:\n        - memory: 24GiB\n",
                              "agent.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  c->nodes[0].slice_memory_bytes = 4096;
  c->nodes[0].metrics_port = static_cast<uint16_t>(port);
  auto agent = NodeAgent::Start(*c, "a", "");
  ASSERT_FALSE(agent.ok());
  EXPECT_EQ(agent.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(agent.status().message().find("nodes[a].slice_memory: would make 6291456 slices of GPU sim-0"),
            std::string::npos)
      << agent.status();
  close(fd);
}

}  // namespace
}  // namespace troupe::cluster
