// The head's api actor with a real `troupe head` and the CLI (troupe tenant|key|usage): a key made
// by the CLI is admitted, bad, revoked and out-of-scope keys are refused (401, 403), a limit hit
// gets 429 with Retry-After, a Settle shows in `troupe usage`, a gateway-like sender whose runtime
// stops frees its reservations, and a head restarted after kill -9 keeps keys and usage.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <caf/all.hpp>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "actors/api/api_keys.h"
#include "actors/api/messages.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/troupe_processes.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

// What a gateway does: Admits from one long-lived actor (the reservation belongs to it), the
// reply handed to whoever asked this actor.
caf::behavior Forwarder(caf::event_based_actor* self, caf::actor api) {
  return {
      [self, api](api::Admit& admit) -> caf::result<api::AdmitReply> {
        auto promise = self->make_response_promise<api::AdmitReply>();
        self->request(api, std::chrono::seconds(10), std::move(admit))
            .then([promise](api::AdmitReply& reply) mutable { promise.deliver(std::move(reply)); },
                  [promise](caf::error& error) mutable { promise.deliver(std::move(error)); });
        return promise;
      },
  };
}

class ApiActorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-api-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    config_ = dir_ + "/cluster.yaml";
    std::ofstream(config_) << "cluster:\n  name: apitest\n  token: api-test-token\n  log_level: warn\n"
                              "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                              "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                              "nodes:\n  - name: a\n    cpus: 1\n    memory: 1GiB\n";
    StartHead();
  }
  void TearDown() override {
    gateway_ = {};
    client_.reset();
    if (head_) {
      head_->Signal(SIGKILL);
      (void)head_->Wait(10s);
    }
    std::filesystem::remove_all(dir_);
  }
  void StartHead() {
    head_ = testing::StartUntilReady({TROUPE_BIN, "head", "-c", config_}, "READY ");
    ASSERT_TRUE(head_);
    client_ = Connect();
    ASSERT_TRUE(client_);
    auto api = client_->ApiActor(10s);
    ASSERT_TRUE(api.ok()) << api.status();
    gateway_ = client_->runtime().Spawn(Forwarder, api->handle());
  }
  std::unique_ptr<cluster::Client> Connect() {
    auto config = cluster::LoadClusterConfig(config_);
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) return nullptr;
    auto client = cluster::Client::Connect(*config, "", 10s);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
  // Runs `troupe ARGS -c FILE`; its exit code and its output (stdout and stderr).
  std::pair<int, std::string> Troupe(std::vector<std::string> args) {
    args.insert(args.begin(), TROUPE_BIN);
    args.insert(args.end(), {"-c", config_});
    auto child = ChildProcess::Spawn(args, {}, /*merge_stderr=*/true);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return {-1, ""};
    std::string out;
    for (auto line = (*child)->ReadLine(20s); line.ok(); line = (*child)->ReadLine(20s)) out += *line + "\n";
    auto status = (*child)->Wait(20s);
    return {status.ok() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1, out};
  }
  Json TroupeJson(const std::vector<std::string>& args) {
    auto [code, out] = Troupe(args);
    EXPECT_EQ(code, 0) << out;
    Json j = Json::parse(out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << out;
    return j;
  }
  api::AdmitReply Admit(const runtime::ActorRef& gateway, const std::string& key, const std::string& deployment = "chat") {
    auto reply = gateway.Request<api::AdmitReply>(
        api::Admit{key, deployment, static_cast<uint32_t>(api::Action::kCallModel), 10, 20}, 10s);
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? *reply : api::AdmitReply{};
  }
  // The usage totals the head has for key `id` (through the Client).
  Json UsageOf(const std::string& id) {
    auto usage = client_->ApiCommand("usage", "", Json{{"key_id", id}}.dump(), 10s);
    EXPECT_TRUE(usage.ok()) << usage.status();
    return usage.ok() ? Json::parse(*usage)["totals"] : Json::object();
  }

  std::string dir_, config_;
  std::unique_ptr<ChildProcess> head_;
  std::unique_ptr<cluster::Client> client_;
  runtime::ActorRef gateway_;
};

TEST_F(ApiActorTest, KeysFromTheCliAreAdmittedRefusedLimitedMeteredAndKeptAcrossAHeadRestart) {
  auto [made, made_out] = Troupe({"tenant", "create", "acme", "--tpm", "100000"});
  ASSERT_EQ(made, 0) << made_out;
  EXPECT_NE(made_out.find("tenant acme created"), std::string::npos) << made_out;
  auto [dup, dup_out] = Troupe({"tenant", "create", "acme"});
  EXPECT_EQ(dup, 1);
  EXPECT_NE(dup_out.find("exists"), std::string::npos) << dup_out;

  auto [created, created_out] = Troupe({"key", "create", "--tenant", "acme", "--deployments", "chat"});
  ASSERT_EQ(created, 0) << created_out;
  EXPECT_NE(created_out.find("only time the key is shown"), std::string::npos) << created_out;
  const Json good = TroupeJson({"key", "create", "--tenant", "acme", "--deployments", "chat", "--json"});
  const Json limited = TroupeJson({"key", "create", "--tenant", "acme", "--rpm", "1", "--json"});
  const Json single = TroupeJson({"key", "create", "--tenant", "acme", "--max-concurrent", "1", "--json"});
  const std::string key = good["key"], id = good["record"]["id"];

  // A good key: admitted, with the tenant's token headers; bad ones: 401; another deployment: 403.
  auto admitted = Admit(gateway_, key);
  ASSERT_TRUE(admitted.admitted) << admitted.message;
  EXPECT_EQ(admitted.key_id, id);
  EXPECT_EQ(admitted.tenant, "acme");
  bool has_tokens_header = false;
  for (const auto& [name, value] : admitted.headers) has_tokens_header |= name == "x-ratelimit-limit-tokens" && value == "100000";
  EXPECT_TRUE(has_tokens_header);
  EXPECT_EQ(Admit(gateway_, "tk-nothing").http_status, 401u);
  std::string wrong = key;
  wrong.back() = wrong.back() == 'x' ? 'y' : 'x';
  EXPECT_EQ(Admit(gateway_, wrong).http_status, 401u);
  auto elsewhere = Admit(gateway_, key, "embed");
  EXPECT_EQ(elsewhere.http_status, 403u);
  EXPECT_EQ(elsewhere.error_type, "permission_denied");

  // A limit: 1 request a minute.
  ASSERT_TRUE(Admit(gateway_, limited["key"]).admitted);
  auto refused = Admit(gateway_, limited["key"]);
  EXPECT_EQ(refused.http_status, 429u);
  EXPECT_GE(refused.retry_after_s, 1u);

  // Settle, then usage (through the Client until the one-way Settle has arrived, then the CLI).
  client_->ApiActor(10s)->Send(api::Settle{admitted.reservation, "chat", 11, 5, false});
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (UsageOf(id).value("requests", 0) == 0 && std::chrono::steady_clock::now() < deadline) {
  }
  const Json usage = TroupeJson({"usage", "--key", id, "--json"});
  EXPECT_EQ(usage["totals"]["requests"], 1) << usage.dump();
  EXPECT_EQ(usage["totals"]["input_tokens"], 11);
  EXPECT_EQ(usage["totals"]["output_tokens"], 5);
  ASSERT_EQ(usage["rows"].size(), 1u);
  EXPECT_EQ(usage["rows"][0]["model"], "chat");
  auto [table, table_out] = Troupe({"usage", "--tenant", "acme", "--since", "1d"});
  EXPECT_EQ(table, 0) << table_out;
  EXPECT_NE(table_out.find("total"), std::string::npos) << table_out;

  // A revoked key: 401.
  auto [revoked, revoked_out] = Troupe({"key", "revoke", id});
  ASSERT_EQ(revoked, 0) << revoked_out;
  auto after = Admit(gateway_, key);
  EXPECT_EQ(after.http_status, 401u);
  EXPECT_NE(after.message.find("revoked"), std::string::npos) << after.message;

  // A gateway whose runtime stops: its reservation is settled as cancelled, and the key's one
  // concurrency slot is free again.
  {
    auto other = Connect();
    ASSERT_TRUE(other);
    auto api = other->ApiActor(10s);
    ASSERT_TRUE(api.ok()) << api.status();
    auto other_gateway = other->runtime().Spawn(Forwarder, api->handle());
    ASSERT_TRUE(Admit(other_gateway, single["key"]).admitted);
    auto busy = Admit(gateway_, single["key"]);
    EXPECT_EQ(busy.http_status, 429u) << busy.message;
    other->runtime().Stop();  // the head loses that node, and with it the gateway actor
    const auto freed_by = std::chrono::steady_clock::now() + 10s;
    bool freed = false;
    while (!freed && std::chrono::steady_clock::now() < freed_by) freed = Admit(gateway_, single["key"]).admitted;
    EXPECT_TRUE(freed) << "the stopped gateway's reservation was not settled within 10 s";
    caf::anon_send_exit(other_gateway.handle(), caf::exit_reason::user_shutdown);
  }

  // kill -9 of the head and a restart: keys, revocations and usage are kept.
  gateway_ = {};
  client_.reset();
  head_->Signal(SIGKILL);
  (void)head_->Wait(10s);
  head_.reset();
  StartHead();
  const Json keys = TroupeJson({"key", "list", "--tenant", "acme", "--json"});
  EXPECT_EQ(keys.size(), 4u) << keys.dump();
  EXPECT_EQ(Admit(gateway_, key).http_status, 401u) << "still revoked";
  EXPECT_TRUE(Admit(gateway_, limited["key"]).admitted);
  const Json kept = TroupeJson({"usage", "--key", id, "--json"});
  EXPECT_EQ(kept["totals"]["input_tokens"], 11) << kept.dump();
  const Json tenants = TroupeJson({"tenant", "list", "--json"});
  ASSERT_EQ(tenants.size(), 2u) << tenants.dump();
  EXPECT_EQ(tenants[1]["limits"]["tokens_per_minute"], 100000);
}

}  // namespace
}  // namespace troupe
