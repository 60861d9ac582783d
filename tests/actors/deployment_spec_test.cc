// Deployment spec parsing: a full spec reads into the expected DeploymentSpec and round-trips
// through JSON, what is left out takes its default, and every kind of bad spec is refused with
// file, line, column, field and what was wrong; the same rules hold for specs built in code.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "actors/serving/autoscaler_policy.h"
#include "actors/serving/deployment_spec.h"

namespace troupe::serving {
namespace {

using runtime::ConfigError;
using std::chrono::milliseconds;

// The smallest valid spec: one version on the test backend.
const std::string kMinimal = R"(name: echo
versions:
  - name: v1
    backend: {test: {}}
)";

// Every field given, none at its default.
const std::string kFull = R"(name: chat-lm
tenant: research
versions:
  - name: stable
    model: tiny-gpt:3
    weight: 90
    backend:
      process:
        command: [./server.sh, --port-from-env]
        env: {HOME_DIR: "${TROUPE_DEPLOYMENT_SPEC_TEST_HOME}/models", LITERAL: "$${X}"}
        working_dir: .
        port_env: SERVER_PORT
        health_path: /v1/models
        ready_timeout: 15m
    resources:
      slices: 2
      slice_memory: 8GiB
      compute_percent: 50
      cpus: 4
      memory: 16GiB
  - name: canary
    path: models/candidate
    weight: 10
    backend:
      test:
        tokens_per_second: 250.5
        first_token_latency: 30ms
        max_tokens: 64
        startup_delay: 2s
        fail_every: 7
        crash_after: 100
        stall_after: 50
replicas:
  min: 0
  max: 8
  initial: 2
autoscaling:
  target_ongoing_requests: 3.5
  target_requests_per_second: 40
  stable_window: 30s
  panic_window: 3s
  panic_threshold: 2.5
  tick: 200ms
  max_scale_up_rate: 10
  max_scale_down_rate: 4
  scale_down_delay: 1m
  scale_to_zero_grace: 45s
routing: least_outstanding
max_ongoing_requests: 8
max_queued_requests: 250
request_timeout: 2m
health_check:
  interval: 5s
  timeout: 500ms
  failure_threshold: 4
  probe_request_path: false
drain_timeout: 45s
rollout:
  max_surge: 2
  max_unavailable: 10%
)";

// A spec directory holding an executable server script, a file that is not executable and a
// working directory, removed after the test.
class DeploymentSpecTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "deployment_spec_test.XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr) << "mkdtemp " << templ;
    dir_ = std::filesystem::canonical(templ).string();
    Write("server.sh", "#!/bin/sh\nexit 0\n");
    ASSERT_EQ(chmod((dir_ + "/server.sh").c_str(), 0755), 0);
    Write("notes.txt", "not a program\n");
    std::filesystem::create_directory(dir_ + "/work");
    ASSERT_EQ(setenv("TROUPE_DEPLOYMENT_SPEC_TEST_HOME", "/home/tester", 1), 0);
    ASSERT_EQ(unsetenv("TROUPE_DEPLOYMENT_SPEC_TEST_UNSET"), 0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }

  std::vector<ConfigError> Errors(const std::string& yaml, DeploymentSpec* spec = nullptr) {
    return ValidateDeploymentSpecText(yaml, "svc.yaml", dir_, spec);
  }

  DeploymentSpec Parse(const std::string& yaml) {
    DeploymentSpec spec;
    const auto errors = Errors(yaml, &spec);
    EXPECT_TRUE(errors.empty()) << errors[0].ToString();
    return spec;
  }

  // The spec is refused with exactly `expected` ("svc.yaml:line:column: field: message") among
  // its errors.
  void ExpectError(const std::string& yaml, const std::string& expected) {
    const std::vector<ConfigError> errors = Errors(yaml);
    ASSERT_FALSE(errors.empty()) << "accepted:\n" << yaml;
    std::string all;
    for (const auto& e : errors) {
      if (e.ToString() == expected) return;
      all += e.ToString() + "\n";
    }
    ADD_FAILURE() << "no error\n  " << expected << "\namong:\n" << all << "for:\n" << yaml;
  }

  // kFull as read (from YAML, or back from JSON).
  void ExpectFull(const DeploymentSpec& spec) {
    EXPECT_EQ(spec.name, "chat-lm");
    EXPECT_EQ(spec.tenant, "research");
    ASSERT_EQ(spec.versions.size(), 2u);
    const VersionSpec& stable = spec.versions[0];
    EXPECT_EQ(stable.name, "stable");
    EXPECT_EQ(stable.model_name, "tiny-gpt");
    EXPECT_EQ(stable.model_version, 3u);
    EXPECT_EQ(stable.model_path, "");
    EXPECT_EQ(stable.weight, 90u);
    EXPECT_EQ(stable.backend, BackendKind::kProcess);
    EXPECT_EQ(stable.process.command, (std::vector<std::string>{"./server.sh", "--port-from-env"}));
    EXPECT_EQ(stable.process.env, (std::map<std::string, std::string>{{"HOME_DIR", "/home/tester/models"},
                                                                       {"LITERAL", "${X}"}}));
    EXPECT_EQ(stable.process.working_dir, dir_);
    EXPECT_EQ(stable.process.port_env, "SERVER_PORT");
    EXPECT_EQ(stable.process.health_path, "/v1/models");
    EXPECT_EQ(stable.process.ready_timeout, std::chrono::minutes(15));
    EXPECT_EQ(stable.resources.slices, 2u);
    EXPECT_EQ(stable.resources.slice_memory_bytes, 8ull << 30);
    EXPECT_EQ(stable.resources.compute_percent, 50u);
    EXPECT_EQ(stable.resources.cpus, 4u);
    EXPECT_EQ(stable.resources.host_memory_bytes, 16ull << 30);
    const VersionSpec& canary = spec.versions[1];
    EXPECT_EQ(canary.name, "canary");
    EXPECT_EQ(canary.model_name, "");
    EXPECT_EQ(canary.model_path, dir_ + "/models/candidate");
    EXPECT_EQ(canary.weight, 10u);
    EXPECT_EQ(canary.backend, BackendKind::kTest);
    EXPECT_DOUBLE_EQ(canary.test.tokens_per_second, 250.5);
    EXPECT_EQ(canary.test.first_token_latency, milliseconds(30));
    EXPECT_EQ(canary.test.max_tokens, 64u);
    EXPECT_EQ(canary.test.startup_delay, std::chrono::seconds(2));
    EXPECT_EQ(canary.test.fail_every, 7u);
    EXPECT_EQ(canary.test.crash_after, 100u);
    EXPECT_EQ(canary.test.stall_after, 50u);
    EXPECT_EQ(canary.resources.cpus, 1u);
    const AutoscalingConfig& a = spec.autoscaling;
    EXPECT_EQ(a.min_replicas, 0u);
    EXPECT_EQ(a.max_replicas, 8u);
    EXPECT_EQ(a.initial_replicas, 2u);
    EXPECT_DOUBLE_EQ(a.target_ongoing_requests, 3.5);
    EXPECT_DOUBLE_EQ(a.target_requests_per_second, 40);
    EXPECT_EQ(a.stable_window, std::chrono::seconds(30));
    EXPECT_EQ(a.panic_window, std::chrono::seconds(3));
    EXPECT_DOUBLE_EQ(a.panic_threshold, 2.5);
    EXPECT_EQ(a.tick, milliseconds(200));
    EXPECT_DOUBLE_EQ(a.max_scale_up_rate, 10);
    EXPECT_DOUBLE_EQ(a.max_scale_down_rate, 4);
    EXPECT_EQ(a.scale_down_delay, std::chrono::minutes(1));
    EXPECT_EQ(a.scale_to_zero_grace, std::chrono::seconds(45));
    EXPECT_EQ(spec.routing, RoutingPolicyKind::kLeastOutstanding);
    EXPECT_EQ(spec.max_ongoing_requests, 8u);
    EXPECT_EQ(spec.max_queued_requests, 250u);
    EXPECT_EQ(spec.request_timeout, std::chrono::minutes(2));
    EXPECT_EQ(spec.health_check.interval, std::chrono::seconds(5));
    EXPECT_EQ(spec.health_check.timeout, milliseconds(500));
    EXPECT_EQ(spec.health_check.failure_threshold, 4u);
    EXPECT_FALSE(spec.health_check.probe_request_path);
    EXPECT_EQ(spec.drain_timeout, std::chrono::seconds(45));
    EXPECT_EQ(spec.rollout.max_surge.ToString(), "2");
    EXPECT_EQ(spec.rollout.max_unavailable.ToString(), "10%");
  }

  std::string dir_;
};

TEST_F(DeploymentSpecTest, AFullSpecReadsEveryField) {
  const DeploymentSpec spec = Parse(kFull);
  ExpectFull(spec);
  // The spec's rules are at least as strict as what the autoscaler's policy needs.
  EXPECT_TRUE(ValidateAutoscalingConfig(spec.autoscaling).ok()) << ValidateAutoscalingConfig(spec.autoscaling);
  EXPECT_TRUE(ValidateAutoscalingConfig(Parse(kMinimal + "replicas: {min: 0, max: 3}\n").autoscaling).ok());
}

TEST_F(DeploymentSpecTest, AFullSpecRoundTripsThroughJson) {
  const DeploymentSpec spec = Parse(kFull);
  const std::string json = DeploymentSpecToJson(spec);
  auto back = DeploymentSpecFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  ExpectFull(*back);
  EXPECT_EQ(DeploymentSpecToJson(*back), json);
  // Durations as text and the rollout amounts as Kubernetes writes them.
  EXPECT_NE(json.find(R"("stable_window":"30s")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("max_unavailable":"10%")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("max_surge":2)"), std::string::npos) << json;
}

TEST_F(DeploymentSpecTest, JsonThatBreaksARuleOrIsNotASpecIsRefused) {
  auto bad = DeploymentSpecFromJson(R"({"name": "x", "versions": []})");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("versions: missing"), std::string::npos) << bad.status();
  EXPECT_FALSE(DeploymentSpecFromJson("[1, 2]").ok());
  EXPECT_FALSE(DeploymentSpecFromJson(R"({"name": "x", "request_timeout": "soon"})").ok());
}

TEST_F(DeploymentSpecTest, WhatIsLeftOutTakesItsDefault) {
  const DeploymentSpec spec = Parse(kMinimal);
  const DeploymentSpec defaults;
  const AutoscalingConfig autoscaling;
  EXPECT_EQ(spec.tenant, "default");
  ASSERT_EQ(spec.versions.size(), 1u);
  const VersionSpec& v = spec.versions[0];
  EXPECT_EQ(v.backend, BackendKind::kTest);
  EXPECT_EQ(v.weight, 1u);
  EXPECT_EQ(v.model_name, "");
  EXPECT_EQ(v.model_path, "");
  EXPECT_DOUBLE_EQ(v.test.tokens_per_second, 100);
  EXPECT_EQ(v.test.first_token_latency, milliseconds(10));
  EXPECT_EQ(v.test.max_tokens, 16u);
  EXPECT_EQ(v.test.fail_every + v.test.crash_after + v.test.stall_after, 0u);
  EXPECT_EQ(v.resources.slices, 0u);
  EXPECT_EQ(v.resources.cpus, 1u);
  EXPECT_EQ(spec.autoscaling.min_replicas, 1u);
  EXPECT_EQ(spec.autoscaling.max_replicas, 1u);
  EXPECT_EQ(spec.autoscaling.initial_replicas, 1u);
  EXPECT_EQ(spec.autoscaling.stable_window, autoscaling.stable_window) << "autoscaling_config.h's default";
  EXPECT_EQ(spec.autoscaling.panic_window, autoscaling.panic_window);
  EXPECT_EQ(spec.autoscaling.tick, autoscaling.tick);
  EXPECT_DOUBLE_EQ(spec.autoscaling.target_ongoing_requests, autoscaling.target_ongoing_requests);
  EXPECT_EQ(spec.routing, RoutingPolicyKind::kPowerOfTwoChoices);
  EXPECT_EQ(spec.max_ongoing_requests, 5u) << "Ray Serve's default since 2.32";
  EXPECT_EQ(spec.max_queued_requests, 1000u);
  EXPECT_EQ(spec.request_timeout, std::chrono::minutes(5));
  EXPECT_EQ(spec.health_check.interval, std::chrono::seconds(2));
  EXPECT_EQ(spec.health_check.timeout, std::chrono::seconds(1));
  EXPECT_EQ(spec.health_check.failure_threshold, 3u);
  EXPECT_TRUE(spec.health_check.probe_request_path);
  EXPECT_EQ(spec.drain_timeout, std::chrono::seconds(20)) << "Ray Serve's graceful_shutdown_timeout_s";
  EXPECT_EQ(spec.rollout.max_surge.ToString(), "25%") << "Kubernetes' Deployment default";
  EXPECT_EQ(spec.rollout.max_unavailable.ToString(), "25%");
  // The process backend's defaults.
  const DeploymentSpec proc = Parse("name: p\nversions:\n  - name: v1\n    backend: {process: {command: [sh]}}\n");
  EXPECT_EQ(proc.versions[0].process.port_env, "PORT");
  EXPECT_EQ(proc.versions[0].process.health_path, "/health");
  EXPECT_EQ(proc.versions[0].process.ready_timeout, std::chrono::minutes(10));
  EXPECT_EQ(proc.versions[0].process.working_dir, dir_) << "the spec file's directory";
  EXPECT_TRUE(proc.versions[0].process.env.empty());
}

TEST_F(DeploymentSpecTest, ReplicaCountsDefaultFromMin) {
  const DeploymentSpec three = Parse(kMinimal + "replicas: {min: 3}\n");
  EXPECT_EQ(three.autoscaling.max_replicas, 3u) << "no autoscaling unless max is given";
  EXPECT_EQ(three.autoscaling.initial_replicas, 3u);
  const DeploymentSpec zero = Parse(kMinimal + "replicas: {min: 0, max: 4}\n");
  EXPECT_EQ(zero.autoscaling.initial_replicas, 1u) << "a new deployment shows it can serve (Knative initial-scale)";
  const DeploymentSpec upto = Parse(kMinimal + "replicas: {max: 6}\n");
  EXPECT_EQ(upto.autoscaling.min_replicas, 1u);
  EXPECT_EQ(upto.autoscaling.initial_replicas, 1u);
}

TEST_F(DeploymentSpecTest, TheExampleLoadsAsACanaryOnTheTestBackend) {
  auto spec = LoadDeploymentSpec(TROUPE_SOURCE_DIR "/examples/serving/service.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->versions.size(), 2u);
  EXPECT_EQ(spec->versions[0].weight, 90u);
  EXPECT_EQ(spec->versions[1].weight, 10u);
  EXPECT_EQ(spec->versions[0].backend, BackendKind::kTest);
  EXPECT_EQ(spec->versions[1].backend, BackendKind::kTest);
  EXPECT_EQ(spec->autoscaling.min_replicas, 1u);
  EXPECT_EQ(spec->autoscaling.max_replicas, 4u);
  EXPECT_TRUE(ValidateDeploymentSpec(*spec).ok());
}

TEST_F(DeploymentSpecTest, TheDocumentedFullExampleIsValid) {
  const std::string docs = TROUPE_SOURCE_DIR "/docs/serving.md";
  auto text = runtime::ReadTextFile(docs, 1 << 20, "docs");
  ASSERT_TRUE(text.ok()) << text.status();
  const size_t section = text->find("### A full example");
  ASSERT_NE(section, std::string::npos) << docs;
  const size_t begin = text->find("```yaml\n", section);
  ASSERT_NE(begin, std::string::npos) << docs;
  const size_t end = text->find("```", begin + 8);
  ASSERT_NE(end, std::string::npos) << docs;
  ASSERT_EQ(setenv("HOME", "/home/tester", 0), 0);
  DeploymentSpec spec;
  const auto errors =
      ValidateDeploymentSpecText(text->substr(begin + 8, end - begin - 8), docs, TROUPE_SOURCE_DIR "/docs", &spec);
  ASSERT_TRUE(errors.empty()) << errors[0].ToString();
  EXPECT_EQ(spec.versions.size(), 2u);
  EXPECT_EQ(spec.versions[0].backend, BackendKind::kProcess);
  EXPECT_EQ(spec.autoscaling.max_replicas, 4u);
}

TEST_F(DeploymentSpecTest, AnUnknownKeyIsNamedWithTheKeysExpected) {
  ExpectError(kMinimal + "replica: 2\n",
              "svc.yaml:5:1: replica: unknown key (expected one of: autoscaling, drain_timeout, health_check, "
              "max_ongoing_requests, max_queued_requests, name, replicas, request_timeout, rollout, routing, tenant, "
              "versions)");
  ExpectError(kMinimal + "    resources: {gpus: 1}\n",
              "svc.yaml:5:17: versions[v1].resources.gpus: unknown key (expected one of: compute_percent, cpus, "
              "memory, slice_memory, slices)");
  ExpectError(kMinimal + "autoscaling:\n  target: 3\n",
              "svc.yaml:6:3: autoscaling.target: unknown key (expected one of: max_scale_down_rate, max_scale_up_rate, "
              "panic_threshold, panic_window, scale_down_delay, scale_to_zero_grace, stable_window, "
              "target_ongoing_requests, target_requests_per_second, tick)");
  ExpectError("name: e\nversions:\n  - name: v1\n    backend: {test: {rate: 5}}\n",
              "svc.yaml:4:22: versions[v1].backend.test.rate: unknown key (expected one of: crash_after, fail_every, "
              "first_token_latency, max_tokens, stall_after, startup_delay, tokens_per_second)");
  ExpectError("name: e\nversions:\n  - name: v1\n    backend: {vllm: {}}\n",
              "svc.yaml:4:15: versions[v1].backend.vllm: unknown key (expected one of: process, test)");
}

TEST_F(DeploymentSpecTest, AKeyGivenTwiceNamesBothLines) {
  ExpectError(kMinimal + "drain_timeout: 1s\ndrain_timeout: 2s\n",
              "svc.yaml:6:1: drain_timeout: given twice, on line 5 and line 6 (remove one)");
}

TEST_F(DeploymentSpecTest, AValueOfTheWrongTypeIsRefused) {
  ExpectError(kMinimal + "max_ongoing_requests: many\n",
              "svc.yaml:5:23: max_ongoing_requests: expected a whole number, got 'many'");
  ExpectError(kMinimal + "autoscaling: {target_ongoing_requests: -1}\n",
              "svc.yaml:5:40: autoscaling.target_ongoing_requests: expected a number such as 2 or 0.5, got '-1'");
  ExpectError(kMinimal + "health_check: {probe_request_path: yes}\n",
              "svc.yaml:5:36: health_check.probe_request_path: expected true or false, got 'yes'");
  ExpectError(kMinimal + "routing: fastest\n",
              "svc.yaml:5:10: routing: unknown routing policy 'fastest': use round_robin, random, weighted, "
              "least_outstanding or power_of_two_choices");
  ExpectError("name: e\nversions: {name: v1}\n",
              "svc.yaml:2:11: versions: expected a list of versions, such as [{name: v1, backend: {test: {}}}]");
  ExpectError("name: e\nversions: [v1]\n", "svc.yaml:2:12: versions[0]: expected a mapping of keys");
  ExpectError(kMinimal + "replicas: 3\n", "svc.yaml:5:11: replicas: expected a mapping of keys");
}

TEST_F(DeploymentSpecTest, ABadSizeOrDurationIsRefused) {
  ExpectError(kMinimal + "    resources: {memory: 2 gigs}\n",
              "svc.yaml:5:25: versions[v1].resources.memory: unknown size unit 'gigs' in '2 gigs' (use B, KiB, MiB, "
              "GiB, TiB, KB, MB, GB)");
  ExpectError(kMinimal + "drain_timeout: 5 minutes\n",
              "svc.yaml:5:16: drain_timeout: unknown duration unit ' minutes' in '5 minutes' (use us, ms, s, m, h)");
  ExpectError(kMinimal + "drain_timeout: 2h\n", "svc.yaml:5:16: drain_timeout: must be at most 1h, got 2h");
  ExpectError(kMinimal + "request_timeout: 0s\n", "svc.yaml:5:18: request_timeout: must be at least 1ms");
  ExpectError(kMinimal + "    resources: {memory: 2PiB}\n",
              "svc.yaml:5:25: versions[v1].resources.memory: unknown size unit 'PiB' in '2PiB' (use B, KiB, MiB, GiB, "
              "TiB, KB, MB, GB)");
  ExpectError(kMinimal + "    resources: {memory: 2048TiB}\n",
              "svc.yaml:5:25: versions[v1].resources.memory: must be at most 1PiB, got 2PiB");
}

TEST_F(DeploymentSpecTest, BoundsAndCrossFieldRulesAreChecked) {
  ExpectError(kMinimal + "replicas: {min: 3, max: 2}\n",
              "svc.yaml:5:17: replicas.min: must not be above replicas.max (2), got 3");
  ExpectError(kMinimal + "replicas: {min: 1, max: 4, initial: 5}\n",
              "svc.yaml:5:37: replicas.initial: must be between replicas.min and replicas.max (1..4), got 5");
  ExpectError(kMinimal + "replicas: {min: 0, max: 0}\n", "svc.yaml:5:25: replicas.max: must be at least 1");
  ExpectError(kMinimal + "replicas: {max: 5000}\n", "svc.yaml:5:17: replicas.max: must be at most 4096, got 5000");
  ExpectError(kMinimal + "max_ongoing_requests: 1\n",
              "svc.yaml:5:23: max_ongoing_requests: must be at least autoscaling.target_ongoing_requests (2): a "
              "replica could never carry its target load");
  ExpectError(kMinimal + "replicas: {min: 0, max: 2}\nmax_queued_requests: 0\n",
              "svc.yaml:6:22: max_queued_requests: must be at least 1 with replicas.min 0: requests wait in the "
              "router's queue while the first replica starts");
  ExpectError(kMinimal + "health_check: {interval: 1s, timeout: 2s}\n",
              "svc.yaml:5:39: health_check.timeout: must not be longer than health_check.interval (1s): checks would "
              "overlap");
  ExpectError(kMinimal + "health_check: {failure_threshold: 0}\n",
              "svc.yaml:5:35: health_check.failure_threshold: must be at least 1");
  ExpectError(kMinimal + "autoscaling: {stable_window: 10s, panic_window: 20s}\n",
              "svc.yaml:5:49: autoscaling.panic_window: must not be longer than autoscaling.stable_window (10s)");
  ExpectError(kMinimal + "autoscaling: {panic_threshold: 1}\n",
              "svc.yaml:5:32: autoscaling.panic_threshold: must be at least 1.1 and at most 10, got 1");
  ExpectError(kMinimal + "autoscaling: {max_scale_down_rate: 1}\n",
              "svc.yaml:5:36: autoscaling.max_scale_down_rate: must be above 1 and at most 1000000, got 1");
  ExpectError(kMinimal + "autoscaling: {tick: 5ms}\n", "svc.yaml:5:21: autoscaling.tick: must be at least 10ms");
  ExpectError(kMinimal + "    resources: {compute_percent: 101}\n",
              "svc.yaml:5:34: versions[v1].resources.compute_percent: must be at most 100, got 101");
  ExpectError(kMinimal + "    resources: {slices: 2}\n",
              "svc.yaml:5:16: versions[v1].resources.slice_memory: required when slices is above 1 (the scheduler "
              "places slices x slice_memory on one GPU)");
  ExpectError(kMinimal + "    resources: {cpus: 0}\n",
              "svc.yaml:5:23: versions[v1].resources.cpus: must be at least 1");
  ExpectError(kMinimal + "    weight: 0\n",
              "svc.yaml:3:3: versions: every weight is 0: give at least one version a weight above 0");
  ExpectError(kMinimal + "    weight: 10001\n", "svc.yaml:5:13: versions[v1].weight: must be at most 10000, got 10001");
  ExpectError(kMinimal + "tenant: \"\"\n", "svc.yaml:5:9: tenant: must not be empty");
}

TEST_F(DeploymentSpecTest, NamesAndVersionsAreChecked) {
  ExpectError("versions:\n  - name: v1\n    backend: {test: {}}\n",
              "svc.yaml:1:1: name: missing (the deployment's name, unique in the cluster)");
  ExpectError("name: Echo_LM\nversions:\n  - name: v1\n    backend: {test: {}}\n",
              "svc.yaml:1:7: name: 'Echo_LM' is not a valid name: lower-case letters, digits and '-', at most 63, "
              "starting and ending with a letter or digit");
  ExpectError("name: e\n", "svc.yaml:1:1: versions: missing (at least one version: its name, backend and resources)");
  ExpectError("name: e\nversions: []\n",
              "svc.yaml:2:11: versions: missing (at least one version: its name, backend and resources)");
  ExpectError(kMinimal + "  - name: v1\n    backend: {test: {}}\n",
              "svc.yaml:5:11: versions[1].name: 'v1' is used by two versions");
  ExpectError("name: e\nversions:\n  - backend: {test: {}}\n",
              "svc.yaml:3:5: versions[0].name: missing (the version's name, such as v1)");
  ExpectError("name: e\nversions:\n  - name: v1\n", "svc.yaml:3:5: versions[v1].backend: missing (test: {...} for the "
                                                    "in-process test model, or process: {command: [...]})");
  ExpectError("name: e\nversions:\n  - name: v1\n    backend: {test: {}, process: {command: [sh]}}\n",
              "svc.yaml:4:14: versions[v1].backend: give one of test and process, not both");
  ExpectError(kMinimal + "    model: tiny-gpt\n",
              "svc.yaml:5:12: versions[v1].model: expected NAME:VERSION of the model repository, such as tiny-gpt:3 "
              "(troupe model list), got 'tiny-gpt'");
  ExpectError(kMinimal + "    model: tiny-gpt:0\n",
              "svc.yaml:5:12: versions[v1].model: the version must be at least 1 (troupe model list)");
  ExpectError(kMinimal + "    model: tiny-gpt:1\n    path: /models/x\n",
              "svc.yaml:6:11: versions[v1].path: give model or path, not both");
  // A second version's fields are named by its name.
  ExpectError(kMinimal + "  - name: canary\n    backend: {test: {max_tokens: 0}}\n",
              "svc.yaml:6:34: versions[canary].backend.test.max_tokens: must be at least 1");
}

TEST_F(DeploymentSpecTest, TheProcessCommandMustBeGivenAndRunnable) {
  const std::string head = "name: e\nversions:\n  - name: v1\n    backend:\n      process:\n";
  ExpectError(head + "        env: {A: b}\n",
              "svc.yaml:6:9: versions[v1].backend.process.command: missing (the server and its arguments, such as "
              "[vllm, serve, MODEL])");
  ExpectError(head + "        command: []\n",
              "svc.yaml:6:18: versions[v1].backend.process.command: must not be empty (the program and its arguments)");
  ExpectError(head + "        command: ./server.sh\n",
              "svc.yaml:6:18: versions[v1].backend.process.command: expected a list of strings, such as [a, b]");
  ExpectError(head + "        command: [./missing.sh]\n",
              "svc.yaml:6:19: versions[v1].backend.process.command: no such file: " + dir_ + "/missing.sh");
  ExpectError(head + "        command: [./notes.txt]\n",
              "svc.yaml:6:19: versions[v1].backend.process.command: " + dir_ + "/notes.txt is not executable");
  const std::string path = getenv("PATH") != nullptr ? getenv("PATH") : "unset";
  ExpectError(head + "        command: [troupe-no-such-server-anywhere]\n",
              "svc.yaml:6:19: versions[v1].backend.process.command: 'troupe-no-such-server-anywhere' not found in "
              "PATH (" + path + "); give its path");
  // A path is taken relative to the working directory.
  ExpectError(head + "        command: [./server.sh]\n        working_dir: work\n",
              "svc.yaml:6:19: versions[v1].backend.process.command: no such file: " + dir_ + "/work/server.sh");
  ExpectError(head + "        command: [sh]\n        working_dir: nowhere\n",
              "svc.yaml:7:22: versions[v1].backend.process.working_dir: no such directory: " + dir_ + "/nowhere");
  ExpectError(head + "        command: [sh]\n        port_env: 9PORT\n",
              "svc.yaml:7:19: versions[v1].backend.process.port_env: '9PORT' is not a variable name (letters, digits "
              "and '_')");
  ExpectError(head + "        command: [sh]\n        health_path: health\n",
              "svc.yaml:7:22: versions[v1].backend.process.health_path: must be an HTTP path starting with '/', got "
              "'health'");
  EXPECT_TRUE(Errors(head + "        command: [./server.sh]\n").empty());
  EXPECT_TRUE(Errors(head + "        command: [../server.sh]\n        working_dir: work\n").empty());
}

TEST_F(DeploymentSpecTest, EnvValuesExpandVariablesFromTheEnvironment) {
  const std::string head = "name: e\nversions:\n  - name: v1\n    backend:\n      process:\n        command: [sh]\n";
  const DeploymentSpec spec = Parse(head + "        env:\n          A: \"${TROUPE_DEPLOYMENT_SPEC_TEST_HOME}/x\"\n"
                                           "          B: \"$${TROUPE_DEPLOYMENT_SPEC_TEST_HOME}\"\n"
                                           "          C: \"cost $5\"\n");
  EXPECT_EQ(spec.versions[0].process.env.at("A"), "/home/tester/x");
  EXPECT_EQ(spec.versions[0].process.env.at("B"), "${TROUPE_DEPLOYMENT_SPEC_TEST_HOME}") << "$${ is a literal ${";
  EXPECT_EQ(spec.versions[0].process.env.at("C"), "cost $5");
  ExpectError(head + "        env:\n          A: \"${TROUPE_DEPLOYMENT_SPEC_TEST_UNSET}\"\n",
              "svc.yaml:8:14: versions[v1].backend.process.env.A: environment variable "
              "TROUPE_DEPLOYMENT_SPEC_TEST_UNSET is not set (set it, or write $${TROUPE_DEPLOYMENT_SPEC_TEST_UNSET} "
              "for a literal ${TROUPE_DEPLOYMENT_SPEC_TEST_UNSET})");
  ExpectError(head + "        env:\n          1A: x\n",
              "svc.yaml:8:11: versions[v1].backend.process.env.1A: not a variable name (letters, digits and '_', not "
              "starting with a digit)");
}

TEST_F(DeploymentSpecTest, RolloutAmountsAreCountsOrPercentages) {
  const DeploymentSpec spec = Parse(kMinimal + "rollout: {max_surge: 100%, max_unavailable: 0}\n");
  EXPECT_TRUE(spec.rollout.max_surge.percent);
  EXPECT_EQ(spec.rollout.max_surge.value, 100u);
  EXPECT_FALSE(spec.rollout.max_unavailable.percent);
  EXPECT_EQ(spec.rollout.max_unavailable.value, 0u);
  ExpectError(kMinimal + "rollout: {max_surge: 150%}\n",
              "svc.yaml:5:22: rollout.max_surge: must be at most 100%, got 150%");
  ExpectError(kMinimal + "rollout: {max_surge: a lot}\n",
              "svc.yaml:5:22: rollout.max_surge: expected a number of replicas or a percentage, such as 1 or 25%, got "
              "'a lot'");
  ExpectError(kMinimal + "rollout: {max_surge: -1%}\n",
              "svc.yaml:5:22: rollout.max_surge: expected a number of replicas or a percentage, such as 1 or 25%, got "
              "'-1%'");
  ExpectError(kMinimal + "rollout: {max_surge: 0, max_unavailable: 0%}\n",
              "svc.yaml:5:42: rollout.max_unavailable: max_surge and max_unavailable must not both be 0: an update "
              "could neither add nor remove a replica");
}

TEST(Rollout, PercentagesResolveAsKubernetesDoes) {
  const RolloutConfig defaults;  // 25% and 25%
  // Surge rounds up, unavailable down: 10 replicas -> 3 and 2.
  EXPECT_EQ(ResolveRollout(defaults, 10).surge, 3u);
  EXPECT_EQ(ResolveRollout(defaults, 10).unavailable, 2u);
  // One replica: surge 1, unavailable 0, so capacity never drops.
  EXPECT_EQ(ResolveRollout(defaults, 1).surge, 1u);
  EXPECT_EQ(ResolveRollout(defaults, 1).unavailable, 0u);
  // Both 0 after rounding: one may be unavailable, so the update progresses.
  const RolloutConfig low{CountOrPercent{10, true}, CountOrPercent{10, true}};
  EXPECT_EQ(ResolveRollout(low, 0).surge, 0u);
  EXPECT_EQ(ResolveRollout(low, 0).unavailable, 1u);
  // Counts are taken as they are.
  const RolloutConfig counts{CountOrPercent{2, false}, CountOrPercent{0, false}};
  EXPECT_EQ(ResolveRollout(counts, 100).surge, 2u);
  EXPECT_EQ(ResolveRollout(counts, 100).unavailable, 0u);
}

TEST_F(DeploymentSpecTest, EveryProblemIsListedAtOnce) {
  const auto errors = Errors(kMinimal + "routing: fastest\nmax_ongoing_requests: 0\nrollout: {max_surge: x}\n"
                                        "replicas: {min: 2, max: 1}\n");
  std::vector<std::string> lines;
  for (const auto& e : errors) lines.push_back(e.ToString());
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "svc.yaml:5:10: routing: unknown routing policy 'fastest': use round_robin, random, "
                       "weighted, least_outstanding or power_of_two_choices",
                       "svc.yaml:7:22: rollout.max_surge: expected a number of replicas or a percentage, such as 1 or "
                       "25%, got 'x'",
                       "svc.yaml:8:17: replicas.min: must not be above replicas.max (1), got 2",
                       "svc.yaml:6:23: max_ongoing_requests: must be at least 1",
                   }));
}

TEST_F(DeploymentSpecTest, NotYamlIsOneErrorWithItsPlace) {
  const auto errors = Errors("name: e\nversions: [unclosed\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].field, "(yaml)");
  EXPECT_GT(errors[0].line, 0);
}

TEST_F(DeploymentSpecTest, AFileIsReadBesideItsDirectoryAndProblemsBecomeAStatus) {
  Write("svc.yaml", "name: e\nversions:\n  - name: v1\n    path: models/x\n    backend: {test: {}}\n");
  auto spec = LoadDeploymentSpec(dir_ + "/svc.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->versions[0].model_path, dir_ + "/models/x");

  Write("bad.yaml", kMinimal + "drain_timeout: 2h\n");
  auto bad = LoadDeploymentSpec(dir_ + "/bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(dir_ + "/bad.yaml:5:16: drain_timeout: must be at most 1h, got 2h"),
            std::string::npos)
      << bad.status();

  const auto missing = ValidateDeploymentSpecFile(dir_ + "/nope.yaml");
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_NE(missing[0].message.find("cannot read deployment spec " + dir_ + "/nope.yaml"), std::string::npos);

  // The client library's entry point: text in memory, relative paths against the current directory.
  auto parsed = ParseDeploymentSpec(kMinimal, "inline");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto refused = ParseDeploymentSpec(kMinimal + "weight: 3\n", "inline");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("inline:5:1: weight: unknown key"), std::string::npos) << refused.status();
}

TEST(DeploymentSpecInCode, TheSameRulesHoldForASpecBuiltInCode) {
  DeploymentSpec spec;
  spec.name = "echo";
  spec.versions.resize(1);
  spec.versions[0].name = "v1";
  EXPECT_TRUE(ValidateDeploymentSpec(spec).ok()) << ValidateDeploymentSpec(spec);

  spec.versions[0].resources.slices = 4;
  spec.autoscaling.min_replicas = 3;
  spec.versions.push_back(spec.versions[0]);
  spec.versions[1].name = "v2";
  spec.versions[1].backend = BackendKind::kProcess;
  spec.rollout = RolloutConfig{CountOrPercent{0, true}, CountOrPercent{0, false}};
  const Status status = ValidateDeploymentSpec(spec);
  ASSERT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "deployment spec echo:\n"
            "versions[v1].resources.slice_memory: required when slices is above 1 (the scheduler places slices x "
            "slice_memory on one GPU)\n"
            "versions[v2].backend.process.command: missing (the server and its arguments, such as [vllm, serve, "
            "MODEL])\n"
            "versions[v2].resources.slice_memory: required when slices is above 1 (the scheduler places slices x "
            "slice_memory on one GPU)\n"
            "replicas.min: must not be above replicas.max (1), got 3\n"
            "rollout.max_unavailable: max_surge and max_unavailable must not both be 0: an update could neither add "
            "nor remove a replica");
}

TEST(DeploymentSpecInCode, TheRoutingPolicyRoundTripsThroughJsonByName) {
  DeploymentSpec spec;
  spec.name = "echo";
  spec.versions.resize(1);
  spec.versions[0].name = "v1";
  spec.routing = RoutingPolicyKind::kWeighted;
  const std::string json = DeploymentSpecToJson(spec);
  EXPECT_NE(json.find(R"("routing":"weighted")"), std::string::npos) << json;
  auto back = DeploymentSpecFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->routing, RoutingPolicyKind::kWeighted);
}

}  // namespace
}  // namespace troupe::serving
