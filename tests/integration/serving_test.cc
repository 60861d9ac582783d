// Serving deployments on a real local cluster (`troupe up`, two CPU nodes on loopback): replicas
// of the test backend placed through the scheduler and started by the node agents, requests
// through the deployment's router, a node killed with -9, scaling under load, a weighted traffic
// split and a delete (docs/serving.md, "Deployments").
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/serving/deployment_spec.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

// A short completion: 4 tokens at 100 tokens/s after a 10 ms first token (about 40 ms).
constexpr const char* kBody = R"({"prompt": "hello there", "max_tokens": 4})";

// Counts of a load run.
struct LoadResult {
  uint64_t ok = 0;
  std::vector<Status> failures;
  std::map<std::string, uint64_t> by_replica;
};

// `threads` clients sending requests back to back until stopped.
class Load {
 public:
  Load(cluster::Client* client, const std::string& deployment, int threads) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, client, deployment] {
        while (!stop_.load()) {
          auto response = client->Infer(deployment, "/v1/completions", kBody, 20s);
          std::lock_guard<std::mutex> lock(mu_);
          if (response.ok()) {
            ++result_.ok;
            ++result_.by_replica[response->replica];
          } else {
            result_.failures.push_back(response.status());
          }
        }
      });
    }
  }
  ~Load() { Stop(); }
  LoadResult Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return result_;
  }
  uint64_t ok() {
    std::lock_guard<std::mutex> lock(mu_);
    return result_.ok;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  LoadResult result_;
  std::vector<std::thread> threads_;
};

class Serving : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-serving", "serving", TwoNodeClusterYaml("serving"));
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
  }

  // A test-backend deployment of `replicas` fixed replicas (one CPU each), routed round robin.
  static std::string Spec(const std::string& name, int replicas, const std::string& extra = "") {
    return "name: " + name + "\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 100, "
           "first_token_latency: 10ms}}\n" + extra + "replicas: {min: " + std::to_string(replicas) +
           ", max: " + std::to_string(replicas) + ", initial: " + std::to_string(replicas) +
           "}\nrouting: round_robin\ndrain_timeout: 10s\n";
  }

  void Deploy(const std::string& yaml) {
    auto spec = serving::ParseDeploymentSpec(yaml, "test spec");
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto deployed = client_->Deploy(*spec, 10s);
    ASSERT_TRUE(deployed.ok()) << deployed.status();
  }

  Json Show(const std::string& name) {
    auto body = client_->DeploymentCommand("show", name, "", 5s);
    return body.ok() ? Json::parse(*body).at("status") : Json{{"error", body.status().ToString()}};
  }

  std::string Events(const std::string& name) {
    auto body = client_->DeploymentCommand("events", name, "", 5s);
    return body.ok() ? *body : body.status().ToString();
  }

  static int Count(const Json& status, const std::string& state) {
    return status.value("replicas_by_state", Json::object()).value(state, 0);
  }

  // Polls the deployment until `done` holds (true) or `timeout` passes (false); `last` keeps the
  // status last seen.
  bool Await(const std::string& name, std::chrono::milliseconds timeout, const std::function<bool(const Json&)>& done,
             Json* last) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      *last = Show(name);
      if (done(*last)) return true;
    }
    return false;
  }

  // Each replica's name and node.
  static std::map<std::string, std::string> ReplicaNodes(const Json& status) {
    std::map<std::string, std::string> out;
    for (const auto& r : status.value("replicas", Json::array())) out[r.value("name", "")] = r.value("node", "");
    return out;
  }

  // The events' `what` since the last head restart (none: the head did not restart yet).
  std::vector<std::string> EventsSinceRestart(const std::string& name) {
    const Json events = Json::parse(Events(name), nullptr, false);
    std::vector<std::string> out;
    bool restarted = false;
    for (const auto& e : events.is_array() ? events : Json::array()) {
      const std::string what = e.value("what", "");
      if (what.rfind("started again after a head restart", 0) == 0) {
        restarted = true;
        out.clear();
      } else if (restarted) {
        out.push_back(what);
      }
    }
    return out;
  }

  // After a head restart: running with exactly the replicas of `before` (name -> node), each
  // taken back, and no replica started, exited or lost since the restart. The stored status
  // shows the earlier head's replicas at once, so the events say when the new head has them.
  bool AwaitTakenBack(const std::string& name, const std::map<std::string, std::string>& before, Json* last) {
    return Await(name, 30s, [&](const Json& s) {
      if (s.value("state", "") != "running" || Count(s, "ready") != static_cast<int>(before.size()) ||
          ReplicaNodes(s) != before) {
        return false;
      }
      size_t taken = 0;
      for (const auto& what : EventsSinceRestart(name)) {
        if (what.find(" taken back on node ") != std::string::npos) ++taken;
        EXPECT_EQ(what.find(" starting on node "), std::string::npos) << what;
        EXPECT_EQ(what.find(" exited"), std::string::npos) << what;
        EXPECT_EQ(what.find("not taken back"), std::string::npos) << what;
      }
      return taken == before.size();
    }, last);
  }

  // Running with exactly `n` ready replicas and nothing else.
  bool AwaitReady(const std::string& name, int n, Json* last, std::chrono::milliseconds timeout = 30s) {
    return Await(name, timeout, [n](const Json& s) {
      return s.value("state", "") == "running" && Count(s, "ready") == n &&
             static_cast<int>(s.value("replicas", Json::array()).size()) == n;
    }, last);
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
};

TEST_F(Serving, TwoReplicasOnTwoNodesAnswerThroughTheRouter) {
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("echo", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("echo", 2, &st)) << st.dump() << "\n" << Events("echo");
  std::set<std::string> nodes;
  for (const auto& r : st.at("replicas")) nodes.insert(r.value("node", ""));
  EXPECT_EQ(nodes, (std::set<std::string>{"a", "b"})) << st.dump();  // spread: one per node
  std::map<std::string, int> by_replica;
  for (int i = 0; i < 20; ++i) {
    auto response = client_->Infer("echo", "/v1/completions", kBody, 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->completion_tokens, 4u);
    EXPECT_NE(response->body.find("text_completion"), std::string::npos) << response->body;
    ++by_replica[response->replica];
  }
  ASSERT_EQ(by_replica.size(), 2u);  // round robin over both
  EXPECT_EQ(by_replica.begin()->second, 10);

  // The CLI: list, show --json and request (the HTTP gateway's stand-in).
  auto request = ChildProcess::Spawn({TROUPE_BIN, "serve", "request", "-c", cluster_->config, "echo", "--path",
                                      "/v1/chat/completions", "--body",
                                      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})"});
  ASSERT_TRUE(request.ok());
  auto line = (*request)->ReadLine(20s);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_NE(line->find("chat.completion"), std::string::npos) << *line;
  auto code = (*request)->Wait(10s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  auto list = ChildProcess::Spawn({TROUPE_BIN, "serve", "list", "-c", cluster_->config});
  ASSERT_TRUE(list.ok());
  auto row = (*list)->ReadLineWithPrefix("echo", 20s);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_NE(row->find("2 ready"), std::string::npos) << *row;
  auto missing = ChildProcess::Spawn({TROUPE_BIN, "serve", "show", "-c", cluster_->config, "nope"}, {}, true);
  ASSERT_TRUE(missing.ok());
  auto err = (*missing)->ReadLine(20s);
  EXPECT_TRUE(err.ok() && err->find("troupe serve list") != std::string::npos) << (err.ok() ? *err : "");
}

TEST_F(Serving, AKilledNodesReplicaIsReplacedAndRequestsKeepBeingAnswered) {
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("survivor", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("survivor", 2, &st)) << st.dump() << "\n" << Events("survivor");
  std::string on_b;
  for (const auto& r : st.at("replicas")) {
    if (r.value("node", "") == "b") on_b = r.value("name", "");
  }
  ASSERT_FALSE(on_b.empty()) << st.dump();
  Load load(client_, "survivor", 4);
  const auto warm_deadline = Clock::now() + 20s;
  while (load.ok() < 20 && Clock::now() < warm_deadline) std::this_thread::yield();
  ASSERT_GE(load.ok(), 20u);
  const auto killed_at = Clock::now();
  ASSERT_EQ(kill(cluster_->pids.at("node b"), SIGKILL), 0);
  // The replica on b is replaced (on a, or on b once `troupe up` has restarted it).
  ASSERT_TRUE(Await("survivor", 30s, [&](const Json& s) {
    if (s.value("state", "") != "running" || Count(s, "ready") != 2) return false;
    for (const auto& r : s.at("replicas")) {
      if (r.value("name", "") == on_b) return false;
    }
    return true;
  }, &st)) << st.dump() << "\n" << Events("survivor");
  const auto replaced_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count();
  const uint64_t after_replacement = load.ok();
  const auto more_deadline = Clock::now() + 20s;
  while (load.ok() < after_replacement + 20 && Clock::now() < more_deadline) std::this_thread::yield();
  LoadResult result = load.Stop();
  EXPECT_GE(result.ok, after_replacement + 20);
  std::printf("node b killed: replaced and running again after %lld ms; %llu requests answered, %zu failed%s%s\n",
              static_cast<long long>(replaced_ms), static_cast<unsigned long long>(result.ok),
              result.failures.size(), result.failures.empty() ? "" : "; first: ",
              result.failures.empty() ? "" : result.failures.front().ToString().c_str());
  // Only requests inside the dead replica fail (at most one per client thread), cleanly.
  EXPECT_LE(result.failures.size(), 4u);
  for (const auto& f : result.failures) {
    EXPECT_EQ(f.code(), StatusCode::kUnavailable) << f;
  }
  EXPECT_NE(Events("survivor").find(on_b + " exited"), std::string::npos) << Events("survivor");
}

TEST_F(Serving, AReplicaWhoseRequestPathIsStuckFailsItsHealthChecksAndIsReplaced) {
  // The test model stops producing tokens at its 4th request (health probes count, the first at
  // its start among them) while the actor still answers: only a probe through the request path
  // sees it.
  ASSERT_NO_FATAL_FAILURE(Deploy("name: stuck\nversions:\n  - name: v1\n    backend: {test: {stall_after: 4}}\n"
                                 "replicas: {min: 1, max: 1, initial: 1}\n"
                                 "health_check: {interval: 200ms, timeout: 100ms, failure_threshold: 2}\n"));
  Json st;
  ASSERT_TRUE(AwaitReady("stuck", 1, &st)) << st.dump() << "\n" << Events("stuck");
  const std::string first = st.at("replicas").at(0).value("name", "");
  const auto deadline = Clock::now() + 30s;
  std::string events;
  while (Clock::now() < deadline) {
    events = Events("stuck");
    if (events.find(first + " failed 2 health checks in a row") != std::string::npos &&
        events.find("replica stuck/v1/replica-1 ready") != std::string::npos) {
      break;
    }
  }
  EXPECT_NE(events.find(first + " failed 2 health checks in a row"), std::string::npos) << events;
  EXPECT_NE(events.find("the request path is stuck"), std::string::npos) << events;  // the replica's reason
  EXPECT_NE(events.find("replica stuck/v1/replica-1 ready"), std::string::npos) << events;  // its replacement
}

TEST_F(Serving, TheAutoscalerAddsReplicasUnderLoadFromTheReplicasAndRoutersReports) {
  // The CLI deploys and waits; one replica, up to three, a target of one request in flight each.
  std::ofstream(cluster_->dir + "/auto.yaml")
      << "name: auto\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 100}}\n"
         "replicas: {min: 1, max: 3, initial: 1}\nautoscaling: {target_ongoing_requests: 1}\n"
         "max_ongoing_requests: 2\n";
  auto deploy = ChildProcess::Spawn({TROUPE_BIN, "serve", "deploy", "-c", cluster_->config, cluster_->dir + "/auto.yaml",
                                     "--wait"});
  ASSERT_TRUE(deploy.ok());
  auto running = (*deploy)->ReadLineWithPrefix("deployment auto: running", 60s);
  ASSERT_TRUE(running.ok()) << running.status() << "\n" << Events("auto");
  auto code = (*deploy)->Wait(10s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  Load load(client_, "auto", 4);
  Json st;
  EXPECT_TRUE(Await("auto", 30s, [](const Json& s) { return Count(s, "ready") == 3; }, &st))
      << st.dump() << "\n" << Events("auto");
  LoadResult result = load.Stop();
  EXPECT_TRUE(result.failures.empty()) << result.failures.size() << " failed, first: " << result.failures.front();
  const std::string events = Events("auto");
  // Panic mode: 1 -> 2 -> 3 (or straight to 3), a tick or two after the load rose.
  EXPECT_NE(events.find("autoscaler: 1 -> "), std::string::npos) << events;
  EXPECT_NE(events.find(" -> 3 replicas"), std::string::npos) << events;
}

// kill -9 of the head: the node agents keep its replicas running, and the restarted head's
// deployment actor takes them back (the same replicas on the same nodes, their leases with them:
// two CPUs each, so a second pair would not fit beside them) instead of starting new ones.
TEST_F(Serving, ARestartedHeadTakesBackTheRunningReplicasAndStartsNone) {
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("phoenix", 2, "    resources: {cpus: 2}\n")));
  Json st;
  ASSERT_TRUE(AwaitReady("phoenix", 2, &st)) << st.dump() << "\n" << Events("phoenix");
  const std::map<std::string, std::string> before = ReplicaNodes(st);
  ASSERT_TRUE(client_->Infer("phoenix", "/v1/completions", kBody, 10s).ok());
  ASSERT_EQ(kill(cluster_->pids.at("head"), SIGKILL), 0);
  const auto killed_at = Clock::now();
  // A request sent while the head is down waits for it and is answered once it is back
  // (Client::Infer's head-restart retry) instead of failing with Unavailable.
  auto during = client_->Infer("phoenix", "/v1/completions", kBody, 20s);
  ASSERT_TRUE(during.ok()) << during.status();
  const double answered_s = std::chrono::duration<double>(Clock::now() - killed_at).count();
  // `troupe up` starts the head again; its deployment actor takes both replicas back.
  ASSERT_TRUE(AwaitTakenBack("phoenix", before, &st)) << st.dump() << "\n" << Events("phoenix");
  const double back_s = std::chrono::duration<double>(Clock::now() - killed_at).count();
  std::map<std::string, int> by_replica;
  for (int i = 0; i < 10; ++i) {
    auto response = client_->Infer("phoenix", "/v1/completions", kBody, 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    ++by_replica[response->replica];
  }
  EXPECT_EQ(by_replica.size(), 2u);
  for (const auto& [name, n] : by_replica) EXPECT_EQ(before.count(name), 1u) << name << " is not a replica of before";
  // As operators see it: `troupe serve show --json`.
  auto show = ChildProcess::Spawn({TROUPE_BIN, "serve", "show", "-c", cluster_->config, "phoenix", "--json"});
  ASSERT_TRUE(show.ok()) << show.status();
  auto line = (*show)->ReadLine(20s);
  ASSERT_TRUE(line.ok()) << line.status();
  const Json shown = Json::parse(*line, nullptr, false);
  const Json& status = shown.contains("status") ? shown.at("status") : shown;
  EXPECT_EQ(Count(status, "ready"), 2) << *line;
  EXPECT_EQ(ReplicaNodes(status), before) << *line;
  std::printf("head killed: a request sent right after it answered %.2f s after the kill; both replicas taken "
              "back and running %.2f s after it (the restart included)\n",
              answered_s, back_s);
}

TEST_F(Serving, ScalingUpAndDownUnderLoadFailsNoRequest) {
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("elastic", 1)));
  Json st;
  ASSERT_TRUE(AwaitReady("elastic", 1, &st)) << st.dump() << "\n" << Events("elastic");
  Load load(client_, "elastic", 4);
  ASSERT_TRUE(client_->DeploymentCommand("scale", "elastic", "3", 5s).ok());
  ASSERT_TRUE(AwaitReady("elastic", 3, &st)) << st.dump() << "\n" << Events("elastic");
  const uint64_t at_three = load.ok();
  const auto deadline = Clock::now() + 20s;
  while (load.ok() < at_three + 30 && Clock::now() < deadline) std::this_thread::yield();
  ASSERT_TRUE(client_->DeploymentCommand("scale", "elastic", "1", 5s).ok());
  ASSERT_TRUE(AwaitReady("elastic", 1, &st)) << st.dump() << "\n" << Events("elastic");
  LoadResult result = load.Stop();
  EXPECT_TRUE(result.failures.empty()) << result.failures.size() << " failed, first: " << result.failures.front();
  EXPECT_GE(result.by_replica.size(), 3u);  // all three served
  const std::string events = Events("elastic");
  EXPECT_NE(events.find("stopped after draining"), std::string::npos) << events;
  EXPECT_TRUE(st.value("scaled_by_hand", false));
}

TEST_F(Serving, TwoVersionsWeightedNinetyTenSplitTheTraffic) {
  ASSERT_NO_FATAL_FAILURE(Deploy("name: split\nversions:\n"
                                 "  - name: stable\n    weight: 90\n    backend: {test: {tokens_per_second: 0, "
                                 "first_token_latency: 1ms}}\n"
                                 "  - name: canary\n    weight: 10\n    backend: {test: {tokens_per_second: 0, "
                                 "first_token_latency: 1ms}}\n"
                                 "replicas: {min: 2, max: 2, initial: 2}\nrouting: weighted\n"));
  Json st;
  ASSERT_TRUE(AwaitReady("split", 2, &st)) << st.dump() << "\n" << Events("split");
  std::map<std::string, int> by_version;
  for (int i = 0; i < 200; ++i) {
    auto response = client_->Infer("split", "/v1/completions", kBody, 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    ++by_version[response->replica.substr(0, response->replica.rfind('/'))];
  }
  EXPECT_NEAR(by_version["split/stable"], 180, 10);
  EXPECT_NEAR(by_version["split/canary"], 20, 10);
}

TEST_F(Serving, DeleteStopsEveryReplicaAndFreesEveryLease) {
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("doomed", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("doomed", 2, &st)) << st.dump() << "\n" << Events("doomed");
  ASSERT_TRUE(client_->Infer("doomed", "/v1/completions", kBody, 10s).ok());
  auto deleted = client_->DeploymentCommand("delete", "doomed", "", 5s);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(client_->DeploymentCommand("show", "doomed", "", 5s).status().code(), StatusCode::kNotFound);
  // Its router is gone with it.
  StatusOr<serving::InferenceResponse> after = UnavailableError("not sent");
  const auto deadline = Clock::now() + 10s;
  do {
    after = client_->Infer("doomed", "/v1/completions", kBody, 2s);
  } while (after.ok() && Clock::now() < deadline);
  EXPECT_FALSE(after.ok());
  // Every lease is free: two replicas of two CPUs each need both nodes whole.
  ASSERT_NO_FATAL_FAILURE(Deploy(Spec("whole", 2, "    resources: {cpus: 2}\n")));
  ASSERT_TRUE(AwaitReady("whole", 2, &st)) << st.dump() << "\n" << Events("whole");
}

// The process backend on the cluster: each replica's server is tests/fakes/fake_openai_server.py,
// started by its node's agent through a shell that records its pid and the slice environment it
// got (a CPU-only lease: CUDA_VISIBLE_DEVICES empty, TROUPE_LEASE_ID set) and then becomes the
// server (exec: the same pid).
class ServingProcess : public Serving {
 protected:
  // Pid -> the line its shell wrote ("<pid> lease=<id> cuda=<CUDA_VISIBLE_DEVICES>").
  std::map<int, std::string> Servers() {
    std::map<int, std::string> out;
    std::ifstream in(cluster_->dir + "/servers");
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) out[std::stoi(line)] = line;
    }
    return out;
  }
  static bool Alive(int pid) { return kill(pid, 0) == 0; }

  // `extra`: more top-level fields (a health_check, say).
  std::string ProcessSpec(const std::string& name, int replicas, const std::string& routing = "round_robin",
                          const std::string& extra = "") {
    return "name: " + name + "\nversions:\n  - name: v1\n    backend:\n      process:\n        command: [/bin/sh, -c, "
           "'echo \"$$ lease=$TROUPE_LEASE_ID cuda=[$CUDA_VISIBLE_DEVICES]\" >> " + cluster_->dir +
           "/servers && exec /usr/bin/python3 " + std::string(TROUPE_SOURCE_DIR) +
           "/tests/fakes/fake_openai_server.py']\n        env: {FAKE_READY_AFTER: \"2\"}\n"
           "        ready_timeout: 30s\nreplicas: {min: " + std::to_string(replicas) + ", max: " +
           std::to_string(replicas) + ", initial: " + std::to_string(replicas) + "}\nrouting: " + routing +
           "\ndrain_timeout: 5s\n" + extra;
  }

  // The pid of the server of replica `replica` (status `st`), found by its lease; 0: none.
  int ServerOf(const Json& st, const std::string& replica) {
    for (const auto& r : st.value("replicas", Json::array())) {
      if (r.value("name", "") != replica) continue;
      const std::string lease = "lease=" + std::to_string(r.value("lease_id", uint64_t{0})) + " ";
      for (const auto& [pid, line] : Servers()) {
        if (line.find(lease) != std::string::npos) return pid;
      }
    }
    return 0;
  }
};

TEST_F(ServingProcess, ServersStartedByTheNodeAgentsAnswerAreReplacedAfterKillAndDieWithTheDeployment) {
  ASSERT_NO_FATAL_FAILURE(Deploy(ProcessSpec("proc", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("proc", 2, &st)) << st.dump() << "\n" << Events("proc");
  std::map<int, std::string> servers = Servers();
  ASSERT_EQ(servers.size(), 2u) << st.dump();
  for (const auto& [pid, line] : servers) {
    EXPECT_TRUE(Alive(pid)) << line;
    EXPECT_NE(line.find("cuda=[]"), std::string::npos) << line;  // a CPU-only lease sees no GPU
    EXPECT_EQ(line.find("lease= "), std::string::npos) << line;  // TROUPE_LEASE_ID is set
  }
  // Each replica's server logs under its node's data dir.
  for (const auto& r : st.at("replicas")) {
    const std::string log = cluster_->dir + "/node-" + r.value("node", "") + "/serving/" + r.value("name", "") + ".log";
    EXPECT_TRUE(std::filesystem::exists(log)) << log;
  }

  // Requests through the router, answered by the fake server (its tokens are t0, t1, ...).
  std::map<std::string, int> by_replica;
  for (int i = 0; i < 10; ++i) {
    auto response = client_->Infer("proc", "/v1/completions", R"({"prompt": "hello there", "max_tokens": 3})", 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->completion_tokens, 3u);
    EXPECT_EQ(response->prompt_tokens, 2u);
    EXPECT_NE(response->body.find("t0 t1 t2"), std::string::npos) << response->body;
    ++by_replica[response->replica];
  }
  EXPECT_EQ(by_replica.size(), 2u);
  auto chat = client_->Infer("proc", "/v1/chat/completions",
                             R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})", 10s);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_NE(chat->body.find("chat.completion"), std::string::npos) << chat->body;

  // kill -9 of one server under load: its replica stops, is replaced by a new server, and the
  // requests keep being answered.
  Load load(client_, "proc", 2);
  const auto warm_deadline = Clock::now() + 20s;
  while (load.ok() < 10 && Clock::now() < warm_deadline) std::this_thread::yield();
  ASSERT_GE(load.ok(), 10u);
  const int victim = servers.begin()->first;
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  ASSERT_TRUE(Await("proc", 30s, [&](const Json& s) {
    return s.value("state", "") == "running" && Count(s, "ready") == 2 && Servers().size() == 3;
  }, &st)) << st.dump() << "\n" << Events("proc");
  const uint64_t after_replacement = load.ok();
  const auto more_deadline = Clock::now() + 20s;
  while (load.ok() < after_replacement + 10 && Clock::now() < more_deadline) std::this_thread::yield();
  LoadResult result = load.Stop();
  EXPECT_GE(result.ok, after_replacement + 10);
  EXPECT_LE(result.failures.size(), 2u);  // at most the requests inside the killed server
  for (const auto& f : result.failures) EXPECT_EQ(f.code(), StatusCode::kUnavailable) << f;
  servers = Servers();
  EXPECT_FALSE(Alive(victim));

  // Delete: every server process is gone.
  ASSERT_TRUE(client_->DeploymentCommand("delete", "proc", "", 5s).ok());
  const auto gone_deadline = Clock::now() + 20s;
  auto any_alive = [&] {
    for (const auto& [pid, line] : servers) {
      if (Alive(pid)) return true;
    }
    return false;
  };
  while (any_alive() && Clock::now() < gone_deadline) std::this_thread::yield();
  for (const auto& [pid, line] : servers) EXPECT_FALSE(Alive(pid)) << line << " still runs after the delete";
}

// kill -9 of the head: the servers of a process-backend deployment keep running (the same pids),
// the restarted head takes their replicas back, and no server is started.
TEST_F(ServingProcess, AHeadRestartKeepsTheServersRunningAndStartsNone) {
  ASSERT_NO_FATAL_FAILURE(Deploy(ProcessSpec("procs", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("procs", 2, &st)) << st.dump() << "\n" << Events("procs");
  const std::map<int, std::string> servers = Servers();
  ASSERT_EQ(servers.size(), 2u) << st.dump();
  const std::map<std::string, std::string> before = ReplicaNodes(st);
  ASSERT_EQ(kill(cluster_->pids.at("head"), SIGKILL), 0);
  ASSERT_TRUE(AwaitTakenBack("procs", before, &st)) << st.dump() << "\n" << Events("procs");
  std::map<std::string, int> by_replica;
  for (int i = 0; i < 10; ++i) {
    auto response = client_->Infer("procs", "/v1/completions", R"({"prompt": "hello there", "max_tokens": 3})", 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    ++by_replica[response->replica];
  }
  EXPECT_EQ(by_replica.size(), 2u);
  // The same two server processes, and no third one started.
  EXPECT_EQ(Servers(), servers);
  for (const auto& [pid, line] : servers) EXPECT_TRUE(Alive(pid)) << line;
}

// A node that comes back only after the restarted head declared it dead (it was stopped, SIGSTOP,
// across the head's kill -9): its replica was replaced meanwhile, and the one it still runs, on a
// lease the head ended, is stopped when it rejoins, its server process with it.
TEST_F(ServingProcess, AReplicaOfANodeBackAfterItWasDeclaredDeadIsStoppedWhenItRejoins) {
  ASSERT_NO_FATAL_FAILURE(Deploy(ProcessSpec("late", 2)));
  Json st;
  ASSERT_TRUE(AwaitReady("late", 2, &st)) << st.dump() << "\n" << Events("late");
  // The server of the replica on node a, found by its lease.
  std::string stale;
  int victim = 0;
  for (const auto& r : st.at("replicas")) {
    if (r.value("node", "") != "a") continue;
    stale = r.value("name", "");
    const std::string lease = "lease=" + std::to_string(r.value("lease_id", uint64_t{0})) + " ";
    for (const auto& [pid, line] : Servers()) {
      if (line.find(lease) != std::string::npos) victim = pid;
    }
  }
  ASSERT_NE(victim, 0) << st.dump();
  const pid_t node_a = cluster_->pids.at("node a");
  ASSERT_EQ(kill(node_a, SIGSTOP), 0);
  ASSERT_EQ(kill(cluster_->pids.at("head"), SIGKILL), 0);
  // The restarted head declares a dead after failure_timeout (1 s) and replaces its replica on b.
  const bool replaced = Await("late", 30s, [&](const Json& s) {
    if (s.value("state", "") != "running" || Count(s, "ready") != 2) return false;
    for (const auto& r : s.value("replicas", Json::array())) {
      if (r.value("name", "") == stale || r.value("node", "") == "a") return false;
    }
    return true;
  }, &st);
  ASSERT_EQ(kill(node_a, SIGCONT), 0);
  ASSERT_TRUE(replaced) << st.dump() << "\n" << Events("late");
  EXPECT_TRUE(Alive(victim)) << "node a's replica was stopped before its node came back";
  // Node a rejoins with its replica; the head does not hold its lease any more and stops it.
  const auto deadline = Clock::now() + 20s;
  while (Alive(victim) && Clock::now() < deadline) std::this_thread::yield();
  EXPECT_FALSE(Alive(victim)) << stale << " outlived its lease: its server " << victim << " still runs";
  auto response = client_->Infer("late", "/v1/completions", R"({"prompt": "hello there", "max_tokens": 3})", 10s);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_NE(response->replica, stale);
}

// A stuck server (SIGSTOP: its socket still accepts connections, nothing answers) under load of 4
// clients: the health checks (every 500 ms, timeout 500 ms, 2 in a row) find it, its replica is
// replaced by a new server, and requests keep being answered by the other replica meanwhile
// (least_outstanding routing: the stuck one holds the most). Only the requests inside the stuck
// server fail, Unavailable, when its replica stops and kills it.
TEST_F(ServingProcess, AStoppedServerFailsItsHealthChecksAndIsReplacedWhileTheOtherReplicaServes) {
  ASSERT_NO_FATAL_FAILURE(Deploy(ProcessSpec("frozen", 2, "least_outstanding",
                                             "health_check: {interval: 500ms, timeout: 500ms, failure_threshold: 2}\n")));
  Json st;
  ASSERT_TRUE(AwaitReady("frozen", 2, &st)) << st.dump() << "\n" << Events("frozen");
  const std::string stuck = st.at("replicas").at(0).value("name", "");
  const int victim = ServerOf(st, stuck);
  ASSERT_NE(victim, 0) << st.dump();
  Load load(client_, "frozen", 4);
  const auto warm_deadline = Clock::now() + 20s;
  while (load.ok() < 10 && Clock::now() < warm_deadline) std::this_thread::yield();
  ASSERT_GE(load.ok(), 10u);
  ASSERT_EQ(kill(victim, SIGSTOP), 0);
  const auto stopped_at = Clock::now();
  const uint64_t ok_at_stop = load.ok();
  const std::string found = "replica " + stuck + " failed 2 health checks in a row";
  const bool replaced = Await("frozen", 30s, [&](const Json& s) {
    if (s.value("state", "") != "running" || Count(s, "ready") != 2) return false;
    for (const auto& r : s.value("replicas", Json::array())) {
      if (r.value("name", "") == stuck) return false;
    }
    return Events("frozen").find(found) != std::string::npos;
  }, &st);
  const auto replaced_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at).count();
  const uint64_t ok_while_stuck = load.ok() - ok_at_stop;
  if (!replaced && Alive(victim)) kill(victim, SIGCONT);  // leave no stopped process behind
  ASSERT_TRUE(replaced) << st.dump() << "\n" << Events("frozen");
  const uint64_t after_replacement = load.ok();
  const auto more_deadline = Clock::now() + 20s;
  while (load.ok() < after_replacement + 10 && Clock::now() < more_deadline) std::this_thread::yield();
  LoadResult result = load.Stop();
  std::printf("server %d stopped: its replica %s replaced and 2 ready again after %lld ms; %llu requests answered "
              "meanwhile, %llu in all, %zu failed%s%s\n",
              victim, stuck.c_str(), static_cast<long long>(replaced_ms), static_cast<unsigned long long>(ok_while_stuck),
              static_cast<unsigned long long>(result.ok), result.failures.size(),
              result.failures.empty() ? "" : "; first: ",
              result.failures.empty() ? "" : result.failures.front().ToString().c_str());
  EXPECT_GT(ok_while_stuck, 0u) << "no request was answered while " << stuck << "'s server was stopped";
  // The event says why: the replica's own probe timed out (not only the deployment's wait).
  EXPECT_NE(Events("frozen").find("the request path is stuck"), std::string::npos) << Events("frozen");
  EXPECT_GE(result.ok, after_replacement + 10);
  // At most the requests inside the stuck server fail (the 4 clients' at most), cleanly.
  EXPECT_LE(result.failures.size(), 4u);
  for (const auto& f : result.failures) EXPECT_EQ(f.code(), StatusCode::kUnavailable) << f;
  // The stopped server was killed with its replica (SIGKILL ends a stopped process too).
  const auto gone_deadline = Clock::now() + 20s;
  while (Alive(victim) && Clock::now() < gone_deadline) std::this_thread::yield();
  EXPECT_FALSE(Alive(victim)) << "the stuck server " << victim << " outlived its replica";
  EXPECT_EQ(Servers().size(), 3u);  // one new server in its place
}

// A cluster with one simulated GPU of two slices: each replica holds its own slice, a third one
// waits in the scheduler's queue, and a scale-down removes the waiting one first.
TEST(ServingOnGpus, EachReplicaHoldsItsOwnSliceAndAWaitingOneIsRemovedFirst) {
  (void)InitLogging("warn");
  auto cluster = LocalCluster::Start("troupe-serving-gpu", "servinggpu",
                                     "cluster:\n  name: servinggpu\n  token: serving-gpu-token\n  log_level: warn\n"
                                     "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                                     "nodes:\n"
                                     "  - name: g\n    cpus: 4\n    memory: 8GiB\n"
                                     "    gpus:\n      simulated:\n        - memory: 8GiB\n"
                                     "    slice_memory: 4GiB\n");
  ASSERT_NE(cluster, nullptr);
  cluster::Client* client = cluster->client.get();
  auto spec = serving::ParseDeploymentSpec("name: sliced\nversions:\n  - name: v1\n    backend: {test: {}}\n"
                                           "    resources: {slices: 1, slice_memory: 4GiB}\n"
                                           "replicas: {min: 3, max: 3, initial: 3}\n",
                                           "test spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(client->Deploy(*spec, 10s).ok());
  auto status = [&] {
    auto body = client->DeploymentCommand("show", "sliced", "", 5s);
    return body.ok() ? Json::parse(*body).at("status") : Json::object();
  };
  auto count = [](const Json& st, const char* state) {
    return st.value("replicas_by_state", Json::object()).value(state, 0);
  };
  Json st;
  auto deadline = Clock::now() + 30s;
  while (Clock::now() < deadline && !(count(st = status(), "ready") == 2 && count(st, "pending") == 1)) {
  }
  ASSERT_EQ(count(st, "ready"), 2) << st.dump();
  ASSERT_EQ(count(st, "pending"), 1) << st.dump();
  for (const auto& r : st.at("replicas")) {
    if (r.value("state", "") != "pending") continue;
    // Why it waits, from the scheduler's queue.
    EXPECT_EQ(r.value("waiting", "").rfind("queue position 1 (normal)", 0), 0u) << r.dump();
  }
  auto slices = client->ListSlices(5s);
  ASSERT_TRUE(slices.ok()) << slices.status();
  ASSERT_EQ(slices->gpus.size(), 1u);
  EXPECT_EQ(slices->gpus[0].slices_free, 0u);
  ASSERT_EQ(slices->gpus[0].leases.size(), 2u);
  EXPECT_NE(slices->gpus[0].leases[0].lease_id, slices->gpus[0].leases[1].lease_id);  // one slice each
  EXPECT_EQ(slices->pending.size(), 1u);
  // Down to 2: the replica still waiting for its slice goes, the ready ones stay.
  ASSERT_TRUE(client->DeploymentCommand("scale", "sliced", "2", 5s).ok());
  deadline = Clock::now() + 30s;
  while (Clock::now() < deadline && (st = status()).value("state", "") != "running") {
  }
  EXPECT_EQ(st.value("state", ""), "running") << st.dump();
  EXPECT_EQ(count(st, "ready"), 2) << st.dump();
  slices = client->ListSlices(5s);
  ASSERT_TRUE(slices.ok());
  EXPECT_TRUE(slices->pending.empty());
  // Deleted: both slices are free again.
  ASSERT_TRUE(client->DeploymentCommand("delete", "sliced", "", 5s).ok());
  deadline = Clock::now() + 30s;
  while (Clock::now() < deadline) {
    slices = client->ListSlices(5s);
    if (slices.ok() && slices->gpus.size() == 1 && slices->gpus[0].slices_free == 2) break;
  }
  ASSERT_TRUE(slices.ok());
  EXPECT_EQ(slices->gpus[0].slices_free, 2u);
}

// Updates and rollbacks (docs/serving.md, "Updates and rollbacks"). A version spec of the test
// backend, `weight` as given.
std::string UpdateVersion(const std::string& name, int weight) {
  return "  - name: " + name + "\n    weight: " + std::to_string(weight) +
         "\n    backend: {test: {tokens_per_second: 100, first_token_latency: 10ms}}\n";
}

std::string UpdateSpec(const std::string& name, const std::string& versions, const std::string& routing) {
  return "name: " + name + "\nversions:\n" + versions +
         "replicas: {min: 2, max: 2, initial: 2}\nrouting: " + routing + "\ndrain_timeout: 10s\n";
}

// Every replica of the status is of `version` (its name: <deployment>/<version>/replica-N).
bool AllOf(const Json& st, const std::string& version) {
  for (const auto& r : st.value("replicas", Json::array())) {
    if (r.value("version", "") != version) return false;
  }
  return true;
}

TEST_F(Serving, ARollingUpdateAndItsRollbackUnderLoadLoseNoRequest) {
  ASSERT_NO_FATAL_FAILURE(Deploy(UpdateSpec("roll", UpdateVersion("v1", 100), "round_robin")));
  Json st;
  ASSERT_TRUE(AwaitReady("roll", 2, &st)) << st.dump() << "\n" << Events("roll");
  const std::string dir = cluster_->config.substr(0, cluster_->config.rfind('/') + 1);
  const std::string v2_file = dir + "roll-v2.yaml";
  std::ofstream(v2_file) << UpdateSpec("roll", UpdateVersion("v2", 100), "round_robin");

  // Refused updates change nothing: a replica that can never fit, another name, no earlier spec.
  auto too_big = serving::ParseDeploymentSpec(
      UpdateSpec("roll", UpdateVersion("v2", 100) + "    resources: {cpus: 64}\n", "round_robin"), "test spec");
  ASSERT_TRUE(too_big.ok()) << too_big.status();
  auto refused = client_->Update(*too_big, 10s);
  ASSERT_EQ(refused.status().code(), StatusCode::kResourceExhausted) << refused.status();
  auto no_rollback = client_->DeploymentCommand("rollback", "roll", "", 10s);
  ASSERT_EQ(no_rollback.status().code(), StatusCode::kFailedPrecondition) << no_rollback.status();
  auto record = client_->DeploymentCommand("show", "roll", "", 5s);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(Json::parse(*record).at("spec").at("versions").at(0).value("name", ""), "v1") << *record;
  EXPECT_FALSE(Json::parse(*record).contains("previous_spec")) << *record;

  for (const auto& [step, want] : std::vector<std::pair<std::string, std::string>>{{"update", "v2"},
                                                                                   {"rollback", "v1"}}) {
    Load load(client_, "roll", 4);
    const auto warm_deadline = Clock::now() + 20s;
    while (load.ok() < 20 && Clock::now() < warm_deadline) std::this_thread::yield();
    ASSERT_GE(load.ok(), 20u);
    std::vector<std::string> argv = {TROUPE_BIN, "serve", step, "-c", cluster_->config,
                                     step == "update" ? v2_file : std::string("roll"), "--wait"};
    auto cli = ChildProcess::Spawn(argv);
    ASSERT_TRUE(cli.ok()) << cli.status();
    auto code = (*cli)->Wait(60s);
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 0) << step << "\n" << Events("roll");
    ASSERT_TRUE(Await("roll", 30s, [&](const Json& s) {
      return s.value("state", "") == "running" && Count(s, "ready") == 2 && AllOf(s, want);
    }, &st)) << step << ": " << st.dump() << "\n" << Events("roll");
    const uint64_t before_stop = load.ok();
    const LoadResult result = load.Stop();
    EXPECT_TRUE(result.failures.empty()) << step << ": " << result.failures.size() << " of "
                                         << result.ok + result.failures.size() << " failed, first: "
                                         << result.failures.front() << "\n" << Events("roll");
    std::printf("%s under load: %llu requests answered, %zu failed\n", step.c_str(),
                static_cast<unsigned long long>(result.ok), result.failures.size());
    EXPECT_GT(result.ok, before_stop / 2);
    // Only the new version answers now.
    for (int i = 0; i < 10; ++i) {
      auto response = client_->Infer("roll", "/v1/completions", kBody, 10s);
      ASSERT_TRUE(response.ok()) << response.status();
      EXPECT_EQ(response->replica.find("roll/" + want + "/"), 0u) << response->replica;
    }
  }
  const std::string events = Events("roll");
  EXPECT_NE(events.find("updated (troupe serve update)"), std::string::npos) << events;
  EXPECT_NE(events.find("updated (troupe serve rollback)"), std::string::npos) << events;
  EXPECT_NE(events.find("rollout complete"), std::string::npos) << events;
  EXPECT_NE(events.find("stopped after draining"), std::string::npos) << events;
  // The record keeps the spec the rollback replaced: a second rollback goes to v2 again.
  record = client_->DeploymentCommand("show", "roll", "", 5s);
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(Json::parse(*record).at("previous_spec").at("versions").at(0).value("name", ""), "v2") << *record;
}

TEST_F(Serving, ACanaryUpdateSplitsTrafficAndABlueGreenSwitchKeepsTheOldVersionAsStandby) {
  ASSERT_NO_FATAL_FAILURE(Deploy(UpdateSpec("canary", UpdateVersion("stable", 100), "weighted")));
  Json st;
  ASSERT_TRUE(AwaitReady("canary", 2, &st)) << st.dump() << "\n" << Events("canary");
  auto update = [&](const std::string& versions) {
    auto spec = serving::ParseDeploymentSpec(UpdateSpec("canary", versions, "weighted"), "test spec");
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto updated = client_->Update(*spec, 10s);
    ASSERT_TRUE(updated.ok()) << updated.status();
  };
  auto split = [&](int n) {
    std::map<std::string, int> by_version;
    for (int i = 0; i < n; ++i) {
      auto response = client_->Infer("canary", "/v1/completions", kBody, 10s);
      EXPECT_TRUE(response.ok()) << response.status();
      if (response.ok()) ++by_version[response->replica.substr(0, response->replica.rfind('/'))];
    }
    return by_version;
  };
  // 90/10: stable keeps one of its replicas (unchanged: not restarted), the canary gets one.
  ASSERT_NO_FATAL_FAILURE(update(UpdateVersion("stable", 90) + UpdateVersion("next", 10)));
  ASSERT_TRUE(Await("canary", 30s, [](const Json& s) {
    return s.value("state", "") == "running" && Count(s, "ready") == 2 && !AllOf(s, "stable") && !AllOf(s, "next");
  }, &st)) << st.dump() << "\n" << Events("canary");
  auto by_version = split(200);
  EXPECT_NEAR(by_version["canary/stable"], 180, 10);
  EXPECT_NEAR(by_version["canary/next"], 20, 10);
  EXPECT_EQ(Events("canary").find("replica canary/stable/replica-0 draining"), std::string::npos)
      << "the oldest stable replica is kept\n" << Events("canary");

  // Blue-green: next to 100, stable to 0. Stable keeps its replica (standby, out of the router's
  // set) until an update removes the version.
  ASSERT_NO_FATAL_FAILURE(update(UpdateVersion("stable", 0) + UpdateVersion("next", 100)));
  ASSERT_TRUE(Await("canary", 30s, [](const Json& s) {
    int stable = 0, next = 0;
    for (const auto& r : s.value("replicas", Json::array())) {
      (r.value("version", "") == "stable" ? stable : next) += r.value("state", "") == "ready";
    }
    return s.value("state", "") == "running" && stable == 1 && next == 2;
  }, &st)) << st.dump() << "\n" << Events("canary");
  by_version = split(40);
  EXPECT_EQ(by_version["canary/next"], 40) << Events("canary");
  ASSERT_NO_FATAL_FAILURE(update(UpdateVersion("next", 100)));
  ASSERT_TRUE(Await("canary", 30s, [](const Json& s) {
    return s.value("state", "") == "running" && Count(s, "ready") == 2 && AllOf(s, "next") &&
           s.value("replicas", Json::array()).size() == 2;
  }, &st)) << st.dump() << "\n" << Events("canary");
}

// An update's router and autoscaler settings apply (they outlive updates): a new autoscaling
// target scales the deployment under the same load, and a queue bound of 0 refuses at once what
// the first bound (1000) queued. Neither change restarts a replica.
TEST_F(Serving, AnUpdateAppliesItsRoutingAndAutoscalingSettings) {
  auto spec = [](const std::string& replicas, const std::string& extra) {
    return "name: tune\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 100, "
           "first_token_latency: 10ms}}\nreplicas: " + replicas +
           "\nmax_ongoing_requests: 5\nrouting: round_robin\ndrain_timeout: 10s\n" + extra;
  };
  auto update = [&](const std::string& yaml) {
    auto parsed = serving::ParseDeploymentSpec(yaml, "test spec");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    auto updated = client_->Update(*parsed, 10s);
    ASSERT_TRUE(updated.ok()) << updated.status();
  };
  ASSERT_NO_FATAL_FAILURE(
      Deploy(spec("{min: 1, max: 3, initial: 1}", "autoscaling: {target_ongoing_requests: 5}\n")));
  Json st;
  ASSERT_TRUE(AwaitReady("tune", 1, &st)) << st.dump() << "\n" << Events("tune");
  {
    // 4 clients at a target of 5 per replica need 1 replica; at a target of 1, 4 (at most 3).
    Load load(client_, "tune", 4);
    ASSERT_NO_FATAL_FAILURE(
        update(spec("{min: 1, max: 3, initial: 1}", "autoscaling: {target_ongoing_requests: 1}\n")));
    EXPECT_TRUE(Await("tune", 30s, [](const Json& s) { return s.value("desired", 0) == 3 && Count(s, "ready") == 3; },
                      &st))
        << "the first target still decides: " << st.dump() << "\n" << Events("tune");
    const LoadResult result = load.Stop();
    EXPECT_TRUE(result.failures.empty()) << result.failures.size() << " failed, first: " << result.failures.front();
  }
  // A fixed size of 1 (the autoscaler stops) and no queue: of 8 requests of 0.5 s sent at once,
  // the replica holds 5 and the router refuses the rest at once.
  ASSERT_NO_FATAL_FAILURE(update(spec("{min: 1, max: 1, initial: 1}", "max_queued_requests: 0\n")));
  ASSERT_TRUE(AwaitReady("tune", 1, &st)) << st.dump() << "\n" << Events("tune");
  std::vector<std::thread> threads;
  std::mutex mu;
  std::vector<Status> outcomes;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto response = client_->Infer("tune", "/v1/completions", R"({"prompt": "slow", "max_tokens": 50})", 20s);
      std::lock_guard<std::mutex> lock(mu);
      outcomes.push_back(response.status());
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, refused = 0;
  for (const auto& status : outcomes) {
    if (status.ok()) ++ok;
    if (status.code() == StatusCode::kResourceExhausted &&
        status.message().find("queue is full") != std::string::npos) {
      ++refused;
    }
  }
  EXPECT_EQ(ok, 5) << "max_ongoing_requests 5";
  EXPECT_EQ(refused, 3) << "max_queued_requests 0 was not applied (the first bound, 1000, queues them)";
  EXPECT_EQ(Events("tune").find("outdated"), std::string::npos) << "no replica was rolled out\n" << Events("tune");
}

// A blue-green standby (a version set to weight 0 that keeps its replicas) is stored: after kill -9
// of the head the new deployment actor takes it back, out of the router's set.
TEST_F(Serving, ABlueGreenStandbyRunsAgainAfterAHeadRestart) {
  auto spec = [](const std::string& versions) {
    return "name: bg\nversions:\n" + versions + "replicas: {min: 1, max: 1, initial: 1}\nrouting: weighted\n";
  };
  ASSERT_NO_FATAL_FAILURE(Deploy(spec(UpdateVersion("blue", 100))));
  Json st;
  ASSERT_TRUE(AwaitReady("bg", 1, &st)) << st.dump() << "\n" << Events("bg");
  auto parsed = serving::ParseDeploymentSpec(spec(UpdateVersion("blue", 0) + UpdateVersion("green", 100)), "test spec");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(client_->Update(*parsed, 10s).ok());
  auto blue_and_green = [](const Json& s) {
    int blue = 0, green = 0;
    for (const auto& r : s.value("replicas", Json::array())) {
      if (r.value("state", "") != "ready") continue;
      (r.value("version", "") == "blue" ? blue : green) += 1;
    }
    return s.value("state", "") == "running" && blue == 1 && green == 1;
  };
  ASSERT_TRUE(Await("bg", 30s, blue_and_green, &st)) << st.dump() << "\n" << Events("bg");
  EXPECT_EQ(st.value("standby", Json::object()).value("blue", 0), 1) << st.dump();
  const std::map<std::string, std::string> before = ReplicaNodes(st);
  ASSERT_EQ(kill(cluster_->pids.at("head"), SIGKILL), 0);
  // Both replicas are taken back, the standby one (bg/blue/replica-0) among them.
  ASSERT_TRUE(AwaitTakenBack("bg", before, &st)) << "the standby replica was not taken back: " << st.dump()
                                                   << "\n" << Events("bg");
  EXPECT_EQ(st.value("standby", Json::object()).value("blue", 0), 1) << st.dump();
  for (int i = 0; i < 10; ++i) {
    auto response = client_->Infer("bg", "/v1/completions", kBody, 10s);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->replica.find("bg/green/"), 0u) << "the standby got a request: " << response->replica;
  }
}

// Scale to zero and back on the cluster: with replicas.min 0 an idle deployment goes to no replica;
// a request then waits at the router, the autoscaler orders one replica at once (scale from zero),
// and the request is answered once it is ready. The replica's startup_delay (the test backend's
// cold-start knob) is part of the cold start the client sees. The initial replica stays until it
// is ready and the grace counts from then (AutoscalerPolicy, rule 0: when the grace counted from
// the deploy, a 500 ms grace under ASan removed the replica while it was still starting); the
// grace's 2 s are the test's time to see it ready before it goes (docs/serving.md, scale to zero).
TEST_F(Serving, ScalesToZeroWhenIdleAndBackForARequest) {
  ASSERT_NO_FATAL_FAILURE(Deploy(
      "name: cold\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 100, first_token_latency: 10ms, "
      "startup_delay: 300ms}}\nreplicas: {min: 0, max: 2, initial: 1}\nautoscaling: {target_ongoing_requests: 1, "
      "stable_window: 1s, panic_window: 1s, scale_to_zero_grace: 2s}\n"));
  Json st;
  ASSERT_TRUE(AwaitReady("cold", 1, &st)) << st.dump() << "\n" << Events("cold");
  const auto idle_since = Clock::now();
  ASSERT_TRUE(Await("cold", 30s, [](const Json& s) {
    return s.value("desired", -1) == 0 && s.value("replicas", Json::array()).empty();
  }, &st)) << "never scaled to zero: " << st.dump() << "\n" << Events("cold");
  const double to_zero_s = std::chrono::duration<double>(Clock::now() - idle_since).count();
  const auto asked = Clock::now();
  auto response = client_->Infer("cold", "/v1/completions", kBody, 30s);
  const double cold_s = std::chrono::duration<double>(Clock::now() - asked).count();
  ASSERT_TRUE(response.ok()) << response.status() << "\n" << Events("cold");
  EXPECT_EQ(response->replica.find("cold/v1/"), 0u) << response->replica;
  EXPECT_GE(cold_s, 0.3) << "the replica's startup_delay (300 ms) is part of the cold start";
  std::printf("scale to zero: idle -> 0 replicas in %.2f s (scale_to_zero_grace 2 s); cold start: a request "
              "with no replica answered in %.3f s (startup_delay 0.3 s, a 40 ms completion)\n",
              to_zero_s, cold_s);
  const std::string events = Events("cold");
  EXPECT_NE(events.find("autoscaler: 1 -> 0 replicas"), std::string::npos) << events;
  EXPECT_NE(events.find("autoscaler: 0 -> 1 replicas"), std::string::npos) << events;
}

// The start count on the cluster: a min_replicas 0 deployment whose initial replica takes 1.5 s to
// start and a scale_to_zero_grace of 500 ms. When the grace counted from the deploy, the replica
// was removed while still starting (1 -> 0 at +717 ms with 500 ms under ASan); now it stays until
// it is ready, and only then does the idle deployment go to zero. The events say in which order.
TEST_F(Serving, AStartingReplicaIsNotScaledToZeroBeforeItWasReady) {
  ASSERT_NO_FATAL_FAILURE(Deploy(
      "name: slow\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 100, first_token_latency: 10ms, "
      "startup_delay: 1500ms}}\nreplicas: {min: 0, max: 2, initial: 1}\nautoscaling: {target_ongoing_requests: 1, "
      "stable_window: 1s, panic_window: 1s, scale_to_zero_grace: 500ms}\n"));
  Json st;
  ASSERT_TRUE(Await("slow", 30s, [](const Json& s) {
    return s.value("desired", -1) == 0 && s.value("replicas", Json::array()).empty();
  }, &st)) << "never scaled to zero: " << st.dump() << "\n" << Events("slow");
  const std::string events = Events("slow");
  const size_t ready = events.find("ready on node");
  const size_t to_zero = events.find("autoscaler: 1 -> 0 replicas");
  ASSERT_NE(to_zero, std::string::npos) << events;
  ASSERT_NE(ready, std::string::npos) << "the replica was removed before it was ever ready:\n" << events;
  EXPECT_LT(ready, to_zero) << events;
}

}  // namespace
}  // namespace troupe
