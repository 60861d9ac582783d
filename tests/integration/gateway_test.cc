// The HTTP gateway on a real local cluster (`troupe up` with a `gateway:` section: head, two
// CPU nodes, the gateway process; a second `troupe gateway` process where a test needs two):
// keys, tenants and limits held by the head's api actor, requests routed to test-backend
// replicas, streamed and not, OpenAI errors for bad input, a client that disconnects mid-stream,
// a gateway killed with -9 (docs/gateway.md).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/serving/deployment_spec.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/gateway_calls.h"
#include "tests/support/http_client.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using testing::HttpCall;
using testing::HttpReply;

using testing::ConnectRaw;
using testing::PortOf;
using testing::StartGateway;
using testing::StartStream;

class Gateway : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-gateway", "gw",
                                   TwoNodeClusterYaml("gw") + "gateway:\n  listen: 127.0.0.1:0\n  read_timeout: 2s\n"
                                                              "  max_body: 64KiB\n");
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
    std::ifstream in(cluster_->dir + "/head/gateway.url");
    std::string url;
    std::getline(in, url);
    ASSERT_FALSE(url.empty()) << "troupe up's gateway wrote no " << cluster_->dir << "/head/gateway.url";
    port_ = PortOf(url);
  }

  // A test-backend deployment of one replica owned by `tenant`.
  void Deploy(const std::string& name, const std::string& tenant = "default", const std::string& backend =
                                                                                  "{tokens_per_second: 200, "
                                                                                  "first_token_latency: 5ms}",
              int max_ongoing = 4) {
    testing::DeployTestModel(*client_, name, tenant, backend, max_ongoing);
  }

  void Tenant(const std::string& name, const Json& limits = Json::object()) {
    auto made = client_->ApiCommand("tenant.create", name, Json{{"limits", limits}}.dump(), 5s);
    ASSERT_TRUE(made.ok()) << made.status();
  }

  // A new key's secret.
  std::string Key(const Json& body) {
    auto made = client_->ApiCommand("key.create", "", body.dump(), 5s);
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? Json::parse(*made).value("key", "") : "";
  }

  HttpReply Post(int port, const std::string& path, const std::string& key, const Json& body) {
    return HttpCall(port, "POST", path, {{"authorization", "Bearer " + key}}, body.dump());
  }

  static Json Chat(const std::string& model, int max_tokens, bool stream = false) {
    return Json{{"model", model},
                {"messages", Json::array({Json{{"role", "user"}, {"content", "hello there"}}})},
                {"max_tokens", max_tokens},
                {"stream", stream}};
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
  int port_ = 0;
};

TEST_F(Gateway, AKeyCallsItsModelWholeAndStreamedAndSeesOnlyWhatItMayCall) {
  Deploy("echo");
  Deploy("hidden");
  Tenant("default");
  Tenant("other");
  Deploy("theirs", "other");
  const std::string key = Key({{"tenant", "default"}, {"deployments", {"echo"}}});
  const std::string any = Key({{"tenant", "default"}});
  ASSERT_FALSE(key.empty());

  HttpReply whole = Post(port_, "/v1/chat/completions", key, Chat("echo", 5));
  ASSERT_EQ(whole.status, 200) << whole.error << whole.body;
  const Json answer = Json::parse(whole.body);
  EXPECT_EQ(answer["object"], "chat.completion");
  EXPECT_EQ(answer["usage"]["completion_tokens"], 5);

  HttpReply streamed = Post(port_, "/v1/chat/completions", key, Chat("echo", 3, true));
  ASSERT_EQ(streamed.status, 200) << streamed.error << streamed.body;
  EXPECT_EQ(streamed.Header("content-type"), "text/event-stream");
  EXPECT_NE(streamed.body.find("chat.completion.chunk"), std::string::npos) << streamed.body;
  EXPECT_EQ(streamed.body.rfind("data: [DONE]\n\n"), streamed.body.size() - 14) << streamed.body;

  HttpReply completion = Post(port_, "/v1/completions", key, Json{{"model", "echo"}, {"prompt", "once upon"},
                                                                  {"max_tokens", 2}});
  ASSERT_EQ(completion.status, 200) << completion.body;
  EXPECT_EQ(Json::parse(completion.body)["object"], "text_completion");

  HttpReply models = HttpCall(port_, "GET", "/v1/models", {{"authorization", "Bearer " + key}});
  ASSERT_EQ(models.status, 200) << models.body;
  std::vector<std::string> ids;
  const Json listed = Json::parse(models.body);  // not in the for: a temporary's member would dangle
  for (const auto& m : listed["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, std::vector<std::string>{"echo"});
  HttpReply all = HttpCall(port_, "GET", "/v1/models", {{"authorization", "Bearer " + any}});
  ASSERT_EQ(all.status, 200) << all.body;
  ids.clear();
  const Json listed_all = Json::parse(all.body);
  for (const auto& m : listed_all["data"]) ids.push_back(m["id"]);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"echo", "hidden"})) << "another tenant's deployment is not listed";

  // Not on the key's list: 403; another tenant's: does not exist for this key.
  EXPECT_EQ(Post(port_, "/v1/chat/completions", key, Chat("hidden", 2)).status, 403);
  HttpReply theirs = Post(port_, "/v1/chat/completions", any, Chat("theirs", 2));
  EXPECT_EQ(theirs.status, 404) << theirs.body;

  // Usage counted per key and model (flushed by the head within its interval).
  const std::string key_id = key.substr(3, 12);
  const auto deadline = Clock::now() + 10s;
  Json usage;
  while (Clock::now() < deadline) {
    auto body = client_->ApiCommand("usage", "", Json{{"key_id", key_id}, {"model", "echo"}}.dump(), 5s);
    ASSERT_TRUE(body.ok()) << body.status();
    usage = Json::parse(*body);
    if (usage.dump().find("\"requests\":3") != std::string::npos) break;
  }
  EXPECT_NE(usage.dump().find("\"requests\":3"), std::string::npos) << usage.dump();
}

TEST_F(Gateway, TheAdminApiActsWithTheCallersRole) {
  Deploy("echo");
  Tenant("default");
  const std::string admin = Key({{"tenant", "default"}, {"role", "admin"}});
  const std::string user = Key({{"tenant", "default"}});
  HttpReply made = Post(port_, "/v1/admin/keys", admin, Json{{"tenant", "default"}});
  ASSERT_EQ(made.status, 200) << made.body;
  const std::string minted = Json::parse(made.body).value("key", "");
  ASSERT_FALSE(minted.empty()) << made.body;
  EXPECT_EQ(Post(port_, "/v1/chat/completions", minted, Chat("echo", 1)).status, 200) << "the key made over HTTP works";
  HttpReply listed = HttpCall(port_, "GET", "/v1/admin/keys", {{"authorization", "Bearer " + admin}});
  EXPECT_EQ(listed.status, 200) << listed.body;
  EXPECT_EQ(listed.body.find(minted), std::string::npos) << "a listing never shows a key";
  HttpReply refused = Post(port_, "/v1/admin/keys", user, Json{{"tenant", "default"}});
  EXPECT_EQ(refused.status, 403) << refused.body;
  const std::string minted_id = minted.substr(3, 12);
  HttpReply revoked =
      HttpCall(port_, "DELETE", "/v1/admin/keys/" + minted_id, {{"authorization", "Bearer " + admin}});
  EXPECT_EQ(revoked.status, 200) << revoked.body;
  EXPECT_EQ(Post(port_, "/v1/chat/completions", minted, Chat("echo", 1)).status, 401) << "revoked over HTTP";
  EXPECT_EQ(HttpCall(port_, "GET", "/v1/admin/usage", {{"authorization", "Bearer " + admin}}).status, 200);
  EXPECT_EQ(HttpCall(port_, "GET", "/v1/admin/nothing", {{"authorization", "Bearer " + admin}}).status, 404);
  // The admin actions over HTTP are in the audit log, by key id.
  auto audit = client_->Audit(0, true, 5s);
  ASSERT_TRUE(audit.ok()) << audit.status();
  EXPECT_NE(audit->find("key.revoke"), std::string::npos) << *audit;
}

TEST_F(Gateway, BadRequestsGetOpenAiErrorsAndTheGatewayKeepsServing) {
  Deploy("echo");
  Tenant("default");
  const std::string key = Key({{"tenant", "default"}});
  auto error_of = [](const HttpReply& r) {
    auto j = Json::parse(r.body, nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"] : Json();
  };
  HttpReply none = HttpCall(port_, "POST", "/v1/chat/completions", {}, Chat("echo", 2).dump());
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(error_of(none).value("code", ""), "invalid_api_key");
  HttpReply wrong = Post(port_, "/v1/chat/completions", "tk-AAAAAAAAAAAA-nope", Chat("echo", 2));
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(wrong.body.find(key), std::string::npos);
  HttpReply bad_json = HttpCall(port_, "POST", "/v1/chat/completions", {{"authorization", "Bearer " + key}}, "{nope");
  EXPECT_EQ(bad_json.status, 400);
  EXPECT_EQ(error_of(bad_json).value("type", ""), "invalid_request_error");
  Json wrong_type = Chat("echo", 2);
  wrong_type["max_tokens"] = "ten";
  HttpReply typed = Post(port_, "/v1/chat/completions", key, wrong_type);
  EXPECT_EQ(typed.status, 400);
  EXPECT_EQ(error_of(typed).value("param", ""), "max_tokens");
  HttpReply unknown = Post(port_, "/v1/chat/completions", key, Chat("no-such-model", 2));
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(error_of(unknown).value("code", ""), "model_not_found");
  Json huge = Chat("echo", 2);
  huge["messages"][0]["content"] = std::string(100 << 10, 'x');
  EXPECT_EQ(Post(port_, "/v1/chat/completions", key, huge).status, 413);
  EXPECT_EQ(HttpCall(port_, "GET", "/v1/nothing-here").status, 404);
  EXPECT_EQ(HttpCall(port_, "GET", "/v1/chat/completions", {{"authorization", "Bearer " + key}}).status, 405);
  // A slow client: half a request, then nothing; the gateway answers 408 within read_timeout
  // (2 s here) and serves others meanwhile.
  const int fd = ConnectRaw(port_);
  ASSERT_GE(fd, 0) << "cannot connect to the gateway";
  const std::string partial = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo";
  ASSERT_EQ(write(fd, partial.data(), partial.size()), static_cast<ssize_t>(partial.size()));
  EXPECT_EQ(Post(port_, "/v1/chat/completions", key, Chat("echo", 2)).status, 200) << "served beside a slow client";
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[512] = {};
  const ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  ASSERT_GT(n, 0) << "the slow client got no answer within 10 s";
  EXPECT_NE(std::string(buf).find("408"), std::string::npos) << buf;
  EXPECT_EQ(HttpCall(port_, "GET", "/healthz").status, 200);
  EXPECT_EQ(HttpCall(port_, "GET", "/readyz").status, 200);
  HttpReply metrics = HttpCall(port_, "GET", "/metrics");
  EXPECT_NE(metrics.body.find("troupe_gateway_responses_total"), std::string::npos);
}

TEST_F(Gateway, AKeysRequestLimitHoldsAcrossTwoGatewaysAndA429SaysWhenToRetry) {
  Deploy("echo");
  Tenant("default");
  // 6 requests per minute: a burst of 6, then one every 10 s.
  const std::string key = Key({{"tenant", "default"}, {"limits", {{"requests_per_minute", 6}}}});
  int second_port = 0;
  auto second = StartGateway(cluster_->config, &second_port);
  ASSERT_NE(second, nullptr);
  int ok = 0, limited = 0;
  std::string retry_after;
  const auto start = Clock::now();
  for (int i = 0; i < 20; ++i) {
    HttpReply r = Post(i % 2 == 0 ? port_ : second_port, "/v1/chat/completions", key, Chat("echo", 1));
    if (r.status == 200) ++ok;
    if (r.status == 429) {
      ++limited;
      retry_after = r.Header("retry-after");
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  // The bucket bound: 6 + 6/min * elapsed.
  EXPECT_LE(ok, 6 + static_cast<int>(seconds / 10.0)) << "in " << seconds << " s";
  EXPECT_GE(ok, 6);
  EXPECT_EQ(ok + limited, 20);
  EXPECT_FALSE(retry_after.empty());
  EXPECT_GE(std::atoi(retry_after.c_str()), 1);
}

// Sends requests for `model` back to back, turn by turn through `ports` and with `keys`, until
// the first 429 (the bucket's burst is spent), then for `window`: the rate admitted after that
// first 429, per second (-1 if no 429 came within a minute).
double AdmittedRateAfterTheBurst(const std::vector<int>& ports, const std::vector<std::string>& keys,
                                 const std::string& model, std::chrono::milliseconds window) {
  size_t turn = 0;
  const std::string body =
      Json{{"model", model}, {"messages", Json::array({Json{{"role", "user"}, {"content", "hi"}}})}, {"max_tokens", 1}}
          .dump();
  auto post = [&] {
    const size_t i = turn++;
    return HttpCall(ports[i % ports.size()], "POST", "/v1/chat/completions",
                    {{"authorization", "Bearer " + keys[i % keys.size()]}}, body)
        .status;
  };
  const auto give_up = Clock::now() + 60s;
  int status = 0;
  while (Clock::now() < give_up && (status = post()) == 200) {
  }
  EXPECT_EQ(status, 429) << "the burst did not end in a 429";
  if (status != 429) return -1;
  const auto t0 = Clock::now();
  int admitted = 0;
  while (Clock::now() - t0 < window) {
    if (post() == 200) ++admitted;
  }
  return admitted / std::chrono::duration<double>(Clock::now() - t0).count();
}

// 300 requests a minute is 5 a second after a burst of 300; over 8 s that is 40 requests, and 5%
// of it is 2 (one more or less comes from where the window's edges fall between refills).
constexpr double kRatePerSecond = 5.0;
constexpr auto kRateWindow = 8s;

TEST_F(Gateway, TheKeyAndTenantLevelsHoldTheirRatesToWithinFivePercent) {
  Deploy("echo");
  Tenant("default");
  Tenant("limited", {{"requests_per_minute", 300}});
  Deploy("echo2", "limited");
  // Key level: one key with the limit, its tenant without.
  const std::string key = Key({{"tenant", "default"}, {"limits", {{"requests_per_minute", 300}}}});
  const double key_rate = AdmittedRateAfterTheBurst({port_}, {key}, "echo", kRateWindow);
  EXPECT_NEAR(key_rate, kRatePerSecond, kRatePerSecond * 0.05 + 1.0 / 8) << "key level";
  // Tenant level: two unlimited keys of the limited tenant share its rate.
  const std::string a = Key({{"tenant", "limited"}});
  const std::string b = Key({{"tenant", "limited"}});
  const double tenant_rate = AdmittedRateAfterTheBurst({port_}, {a, b}, "echo2", kRateWindow);
  EXPECT_NEAR(tenant_rate, kRatePerSecond, kRatePerSecond * 0.05 + 1.0 / 8) << "tenant level";
  std::printf("admitted after the burst: key %.3f/s, tenant %.3f/s (limit %.1f/s)\n", key_rate, tenant_rate,
              kRatePerSecond);
}

TEST(GatewayGlobalLimit, TheClusterLevelHoldsItsRateToWithinFivePercentAcrossTwoGateways) {
  (void)InitLogging("warn");
  auto cluster = LocalCluster::Start("troupe-gateway-global", "gwg",
                                     TwoNodeClusterYaml("gwg") +
                                         "gateway:\n  listen: 127.0.0.1:0\n  limits:\n    requests_per_minute: 300\n");
  ASSERT_NE(cluster, nullptr);
  auto* client = cluster->client.get();
  auto spec = serving::ParseDeploymentSpec(
      "name: echo\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 0}}\n"
      "replicas: {min: 1, max: 1, initial: 1}\n",
      "spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(client->Deploy(*spec, 10s).ok());
  const auto deadline = Clock::now() + 30s;
  bool ready = false;
  while (!ready && Clock::now() < deadline) {
    auto shown = client->DeploymentCommand("show", "echo", "", 5s);
    ready = shown.ok() && Json::parse(*shown)["status"]["replicas_by_state"].value("ready", 0) == 1;
  }
  ASSERT_TRUE(ready);
  ASSERT_TRUE(client->ApiCommand("tenant.create", "default", "{}", 5s).ok());
  auto made = client->ApiCommand("key.create", "", R"({"tenant": "default"})", 5s);
  ASSERT_TRUE(made.ok()) << made.status();
  const std::string key = Json::parse(*made)["key"];
  std::string url;
  std::getline(std::ifstream(cluster->dir + "/head/gateway.url"), url);
  int second_port = 0;
  auto second = StartGateway(cluster->config, &second_port);
  ASSERT_NE(second, nullptr);
  // Half the requests through each gateway: one cluster-wide bucket.
  const double rate = AdmittedRateAfterTheBurst({PortOf(url), second_port}, {key}, "echo", kRateWindow);
  EXPECT_NEAR(rate, kRatePerSecond, kRatePerSecond * 0.05 + 1.0 / 8) << "global level";
  std::printf("admitted after the burst, global level over two gateways: %.3f/s (limit %.1f/s)\n", rate,
              kRatePerSecond);
}

TEST_F(Gateway, AStreamedRequestCannotOvershootASmallTokenLimit) {
  Deploy("echo");
  Tenant("default");
  // 100 tokens a minute; "hello there" is reserved as 11 prompt tokens (one a byte).
  const std::string key = Key({{"tenant", "default"}, {"limits", {{"tokens_per_minute", 100}}}});
  HttpReply big = Post(port_, "/v1/chat/completions", key, Chat("echo", 4000, true));
  EXPECT_EQ(big.status, 429) << big.body;
  EXPECT_NE(big.body.find("more than the limit"), std::string::npos) << big.body;
  HttpReply fits = Post(port_, "/v1/chat/completions", key, Chat("echo", 60, true));
  EXPECT_EQ(fits.status, 200) << fits.body;
  // 11 + 60 reserved of 100: the next 60 does not fit until the first settles and refill pays.
  HttpReply next = Post(port_, "/v1/chat/completions", key, Chat("echo", 60, true));
  EXPECT_EQ(next.status, 429) << next.body;
}

TEST_F(Gateway, AClientThatDisconnectsMidStreamHasItsRequestCancelledAtTheReplica) {
  // One replica that takes one request at a time, 5 tokens a second: a 200-token stream would
  // hold it for 40 s.
  Deploy("slow", "default", "{tokens_per_second: 5, first_token_latency: 5ms}", 1);
  Tenant("default");
  const std::string key = Key({{"tenant", "default"}});
  std::string seen;
  const int fd = StartStream(port_, key, Chat("slow", 200, true).dump(), &seen);
  ASSERT_GE(fd, 0) << "no event within 10 s: " << seen;
  close(fd);
  // The replica holds one request: the next is answered only once the stream was cancelled.
  const auto t0 = Clock::now();
  HttpReply after = HttpCall(port_, "POST", "/v1/chat/completions", {{"authorization", "Bearer " + key}},
                             Chat("slow", 1).dump(), 15s);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_EQ(after.status, 200) << after.error << after.body;
  EXPECT_LT(ms, 5000) << "the abandoned stream still held the replica";
}

TEST_F(Gateway, AGatewayKilledWithMinus9HasItsReservationsFreedByTheHead) {
  Deploy("slow", "default", "{tokens_per_second: 5, first_token_latency: 5ms}", 4);
  Tenant("default");
  // One request at a time for this key.
  const std::string key = Key({{"tenant", "default"}, {"limits", {{"max_concurrent", 1}}}});
  int second_port = 0;
  auto second = StartGateway(cluster_->config, &second_port);
  ASSERT_NE(second, nullptr);
  // A long stream through the second gateway holds the key's one slot once its first event came.
  std::string seen;
  const int fd = StartStream(second_port, key, Chat("slow", 200, true).dump(), &seen);
  ASSERT_GE(fd, 0) << "the stream through the second gateway did not start: " << seen;
  EXPECT_EQ(Post(port_, "/v1/chat/completions", key, Chat("slow", 1)).status, 429)
      << "the stream through the second gateway does not hold the key's slot";
  second->Signal(SIGKILL);
  (void)second->Wait(10s);
  close(fd);
  int status = 0;
  // The head sees the gateway gone (its failure detector) and frees the slot.
  const auto t0 = Clock::now();
  const auto deadline = t0 + 15s;
  while (Clock::now() < deadline) {
    status = Post(port_, "/v1/chat/completions", key, Chat("slow", 1)).status;
    if (status == 200) break;
  }
  EXPECT_EQ(status, 200) << "the killed gateway's reservation was never freed";
  std::printf("slot freed %lld ms after kill -9 of the gateway\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()));
}

}  // namespace
}  // namespace troupe
