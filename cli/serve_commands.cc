// troupe serve.
#include "cli/serve_commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "actors/serving/deployment_spec.h"
#include "cli/json_output.h"
#include "cluster/client.h"

namespace troupe::cli {

using namespace std::chrono_literals;
using Json = nlohmann::json;

namespace {

int Fail(const std::string& what, const Status& status) {
  std::cerr << "troupe serve " << what << ": " << status.message() << "\n";
  return 1;
}

// "2 ready, 1 starting" from replicas_by_state.
std::string Counts(const Json& status) {
  std::string out;
  for (const char* state : {"ready", "starting", "pending", "draining", "recovering"}) {
    const int n = status.value("replicas_by_state", Json::object()).value(state, 0);
    if (n == 0) continue;
    out += (out.empty() ? "" : ", ") + std::to_string(n) + " " + state;
  }
  return out.empty() ? "no replicas" : out;
}

void PrintShow(const Json& record) {
  const Json& st = record.at("status");
  const Json& spec = record.at("spec");
  std::printf("deployment %s: %s (%s)\n", st.value("name", "").c_str(), st.value("state", "").c_str(),
              st.value("reason", "").c_str());
  std::printf("  desired %u%s; replicas: %s; router %s (generation %llu)\n", st.value("desired", 0u),
              st.value("scaled_by_hand", false) ? " (scaled by hand)" : "", Counts(st).c_str(),
              st.value("router", "").c_str(), static_cast<unsigned long long>(st.value("generation", uint64_t{0})));
  for (const auto& v : spec.value("versions", Json::array())) {
    std::printf("  version %s: weight %u, backend %s\n", v.value("name", "").c_str(), v.value("weight", 0u),
                v.value("backend", "").c_str());
  }
  for (const auto& r : st.value("replicas", Json::array())) {
    std::printf("  %-40s %-9s node %-12s lease %llu\n", r.value("name", "").c_str(), r.value("state", "").c_str(),
                r.value("node", "").empty() ? "-" : r.value("node", "").c_str(),
                static_cast<unsigned long long>(r.value("lease_id", uint64_t{0})));
    if (r.contains("waiting")) std::printf("    waiting for its lease: %s\n", r.value("waiting", "").c_str());
  }
}

// Until every desired replica is ready (state running; after an update or rollback also no
// outdated replica left), at most `bound`.
int WaitReady(cluster::Client& client, const std::string& action, const std::string& name, bool json,
              std::chrono::seconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  std::string last;
  for (;;) {
    auto reply = client.DeploymentCommand("show", name, "", 5s);
    if (!reply.ok()) return Fail(action, reply.status());
    const Json record = Json::parse(*reply);
    const Json& st = record.at("status");
    const std::string line = st.value("state", "") + ": " + Counts(st);
    if (line != last && !json) std::printf("deployment %s: %s\n", name.c_str(), line.c_str());
    std::fflush(stdout);
    last = line;
    if (st.value("state", "") == "running") {
      if (json) std::cout << OneLineJson(nlohmann::ordered_json::parse(*reply)) << std::endl;
      return 0;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::cerr << "troupe serve " << action << ": deployment " << name << " not ready after " << bound.count()
                << " s (" << line << "); `troupe serve events " << name << "` says why\n";
      return 1;
    }
    std::this_thread::sleep_for(200ms);  // a poll interval, not a wait for a condition
  }
}

}  // namespace

int RunServe(ServeOptions args) {
  serving::DeploymentSpec spec;
  if (args.action == "deploy" || args.action == "update") {
    // The spec is checked before the cluster is contacted: a bad one starts nothing.
    auto loaded = serving::LoadDeploymentSpec(args.target);
    if (!loaded.ok()) return Fail(args.action, loaded.status());
    spec = std::move(*loaded);
  }
  if (args.action == "request") {
    Json parsed = Json::parse(args.body, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) {
      return Fail("request", InvalidArgumentError("--body is not a JSON object (an OpenAI request body, e.g. "
                                                  "'{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}')"));
    }
  }
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail(args.action, client.status());
  cluster::Client& c = **client;
  const bool json = args.cluster.json;
  if (args.action == "request") {
    auto response = c.Infer(args.target, args.path, args.body, std::chrono::seconds(args.timeout_seconds));
    if (!response.ok()) return Fail("request", response.status());
    if (json) {
      nlohmann::ordered_json out;
      out["replica"] = response->replica;
      out["http_status"] = response->http_status;
      out["prompt_tokens"] = response->prompt_tokens;
      out["completion_tokens"] = response->completion_tokens;
      out["first_token_us"] = response->first_token_us;
      out["body"] = response->body;
      std::cout << OneLineJson(out) << std::endl;
    } else {
      std::cout << response->body << std::endl;
    }
    return 0;
  }
  StatusOr<std::string> reply = args.action == "deploy" ? c.Deploy(spec, 10s)
                                : args.action == "update" ? c.Update(spec, 10s)
                                : args.action == "scale"
                                    ? c.DeploymentCommand("scale", args.target, std::to_string(args.replicas), 10s)
                                    : c.DeploymentCommand(args.action, args.target, "", 10s);
  if (!reply.ok()) return Fail(args.action, reply.status());
  if (args.action == "rollback") spec.name = args.target;
  if ((args.action == "deploy" || args.action == "update" || args.action == "rollback") && args.wait) {
    return WaitReady(c, args.action, spec.name, json, std::chrono::seconds(args.wait_seconds));
  }
  if (json) {
    std::cout << OneLineJson(nlohmann::ordered_json::parse(*reply)) << std::endl;
    return 0;
  }
  const Json parsed = Json::parse(*reply);
  if (args.action == "list") {
    std::printf("%-24s %-12s %7s  %s\n", "NAME", "STATE", "DESIRED", "REPLICAS");
    for (const auto& record : parsed) {
      const Json& st = record.at("status");
      std::printf("%-24s %-12s %7u  %s\n", st.value("name", "").c_str(), st.value("state", "").c_str(),
                  st.value("desired", 0u), Counts(st).c_str());
    }
    if (parsed.empty()) std::printf("no deployments\n");
    return 0;
  }
  if (args.action == "events") {
    for (const auto& e : parsed) {
      const std::string why = e.value("why", "");
      std::printf("%lld %s%s%s\n", static_cast<long long>(e.value("unix_ms", int64_t{0})), e.value("what", "").c_str(),
                  why.empty() ? "" : ": ", why.c_str());
    }
    return 0;
  }
  if (args.action == "show") {
    PrintShow(parsed);
    return 0;
  }
  const Json& st = parsed.at("status");
  if (args.action == "deploy") {
    std::printf("deployment %s deployed (%u replica(s) starting); `troupe serve show %s` follows it\n",
                st.value("name", "").c_str(), spec.autoscaling.initial_replicas, spec.name.c_str());
  } else if (args.action == "update" || args.action == "rollback") {
    std::printf("deployment %s: %s accepted (stored); `troupe serve events %s` follows the rollout\n",
                st.value("name", "").c_str(), args.action.c_str(), st.value("name", "").c_str());
  } else if (args.action == "scale") {
    std::printf("deployment %s: scaling to %d replica(s) (from %u)\n", args.target.c_str(), args.replicas,
                st.value("desired", 0u));
  } else {
    std::printf("deployment %s: %s (its replicas are stopped and their leases freed)\n", args.target.c_str(),
                st.value("state", "").c_str());
  }
  return 0;
}

}  // namespace troupe::cli
