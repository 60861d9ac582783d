// troupe key, troupe tenant, troupe usage.
#include "cli/api_commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "cli/json_output.h"
#include "cluster/client.h"
#include "runtime/yaml_reader.h"

namespace troupe::cli {

using namespace std::chrono_literals;
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

namespace {

int Fail(const std::string& what, const Status& status) {
  std::cerr << "troupe " << what << ": " << status.message() << "\n";
  return 1;
}

Json Limits(const ApiOptions& a) {
  return Json{{"requests_per_minute", a.rpm}, {"tokens_per_minute", a.tpm}, {"max_concurrent", a.max_concurrent}};
}

// "1000/min" or "-" for unlimited.
std::string Rate(const Json& limits, const char* field, const char* unit) {
  const uint64_t n = limits.value(field, uint64_t{0});
  return n == 0 ? "-" : std::to_string(n) + unit;
}

std::string LimitsText(const Json& limits) {
  return "requests " + Rate(limits, "requests_per_minute", "/min") + ", tokens " +
         Rate(limits, "tokens_per_minute", "/min") + ", concurrent " + Rate(limits, "max_concurrent", "");
}

// A key record's deployments: `all` when it may call every deployment of its tenant.
std::string Deployments(const Json& record, const std::string& all, const std::string& separator) {
  if (record.value("all_deployments", true)) return all;
  std::string out;
  for (const auto& d : record.value("deployments", Json::array())) {
    out += (out.empty() ? "" : separator) + d.get<std::string>();
  }
  return out;
}

// Milliseconds since the epoch as "2026-01-01 00:00 UTC" ("never" for 0).
std::string UtcTime(int64_t unix_ms) {
  if (unix_ms == 0) return "never";
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%d %H:%M", &tm);
  return std::string(out) + " UTC";
}

// "7d" or anything runtime::ParseDuration takes.
StatusOr<std::chrono::milliseconds> ParseSince(const std::string& text) {
  if (!text.empty() && text.back() == 'd') {
    const std::string digits = text.substr(0, text.size() - 1);
    if (!digits.empty() && digits.size() <= 5 && digits.find_first_not_of("0123456789") == std::string::npos) {
      return std::chrono::milliseconds(std::stoll(digits) * 24 * 3600 * 1000);
    }
  }
  auto d = runtime::ParseDuration(text);
  if (!d.ok()) return InvalidArgumentError("--since: " + d.status().message() + " (or days, such as 7d)");
  return *d;
}

// Parses the api actor's JSON reply (it is always JSON; a broken one is reported, not thrown).
StatusOr<Json> Parsed(const std::string& reply) {
  Json j = Json::parse(reply, nullptr, false);
  if (j.is_discarded()) return InternalError("the head's reply is not JSON: " + reply.substr(0, 200));
  return j;
}

// What every command does with the head's reply: an error is printed (returns 1); with --json the
// reply is printed as one line (returns 0); else it is parsed into *out for the command's own
// output (returns -1).
int Handle(const std::string& what, const StatusOr<std::string>& reply, bool json, Json* out) {
  if (!reply.ok()) return Fail(what, reply.status());
  if (json) {
    std::cout << OneLineJson(OrderedJson::parse(*reply)) << std::endl;
    return 0;
  }
  auto parsed = Parsed(*reply);
  if (!parsed.ok()) return Fail(what, parsed.status());
  *out = std::move(*parsed);
  return -1;
}

}  // namespace

int RunKey(ApiOptions args) {
  const std::string what = "key " + args.action;
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail(what, client.status());
  cluster::Client& c = **client;
  StatusOr<std::string> reply = std::string();
  if (args.action == "create") {
    Json body{{"tenant", args.tenant}, {"role", args.role.empty() ? "user" : args.role}};
    if (!args.expires_in.empty()) body["expires_in"] = args.expires_in;
    if (!args.deployments.empty()) {
      Json list = Json::array();
      size_t from = 0;
      while (from <= args.deployments.size()) {
        const size_t comma = args.deployments.find(',', from);
        const std::string name = args.deployments.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
        if (!name.empty()) list.push_back(name);
        if (comma == std::string::npos) break;
        from = comma + 1;
      }
      body["deployments"] = list;
    }
    body["limits"] = Limits(args);
    reply = c.ApiCommand("key.create", "", body.dump(), 10s);
  } else if (args.action == "list") {
    Json body = Json::object();
    if (!args.tenant.empty()) body["tenant"] = args.tenant;
    reply = c.ApiCommand("key.list", "", body.dump(), 10s);
  } else {
    reply = c.ApiCommand("key.revoke", args.target, "", 10s);
  }
  Json j;
  if (int done = Handle(what, reply, args.cluster.json, &j); done >= 0) return done;
  if (args.action == "create") {
    const Json& r = j.at("record");
    const std::string deployments = Deployments(r, "all of the tenant's", ", ");
    std::printf("key %s created for tenant %s: role %s, expires %s, deployments: %s, limits: %s\n\n  %s\n\n",
                r.value("id", "").c_str(), r.value("tenant", "").c_str(), r.value("role", "").c_str(),
                UtcTime(r.value("expires_unix_ms", int64_t{0})).c_str(), deployments.c_str(),
                LimitsText(r.value("limits", Json::object())).c_str(), j.value("key", "").c_str());
    std::printf("This is the only time the key is shown: store it now (the head keeps only its hash).\n");
    return 0;
  }
  if (args.action == "list") {
    std::printf("%-14s %-20s %-9s %-8s %-22s %-24s %s\n", "ID", "TENANT", "ROLE", "STATE", "EXPIRES", "DEPLOYMENTS",
                "LIMITS");
    for (const auto& r : j) {
      const std::string deployments = Deployments(r, "*", ",");
      const int64_t expires = r.value("expires_unix_ms", int64_t{0});
      const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch()).count();
      const char* state = r.value("revoked", false) ? "revoked" : (expires != 0 && now >= expires) ? "expired" : "active";
      std::printf("%-14s %-20s %-9s %-8s %-22s %-24s %s\n", r.value("id", "").c_str(), r.value("tenant", "").c_str(),
                  r.value("role", "").c_str(), state, UtcTime(expires).c_str(), deployments.c_str(),
                  LimitsText(r.value("limits", Json::object())).c_str());
    }
    if (j.empty()) std::printf("no keys\n");
    return 0;
  }
  std::printf("key %s revoked (tenant %s): requests with it get 401 from now on\n", args.target.c_str(),
              j.at("record").value("tenant", "").c_str());
  return 0;
}

int RunTenant(ApiOptions args) {
  const std::string what = "tenant " + args.action;
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail(what, client.status());
  StatusOr<std::string> reply =
      args.action == "create"
          ? (*client)->ApiCommand("tenant.create", args.target, Json{{"limits", Limits(args)}}.dump(), 10s)
          : (*client)->ApiCommand("tenant.list", "", "", 10s);
  Json parsed;
  if (int done = Handle(what, reply, args.cluster.json, &parsed); done >= 0) return done;
  if (args.action == "create") {
    std::printf("tenant %s created (limits: %s); `troupe key create --tenant %s` makes its keys\n",
                args.target.c_str(), LimitsText(parsed.at("tenant").value("limits", Json::object())).c_str(),
                args.target.c_str());
    return 0;
  }
  std::printf("%-24s %-22s %s\n", "NAME", "CREATED", "LIMITS");
  for (const auto& t : parsed) {
    std::printf("%-24s %-22s %s%s\n", t.value("name", "").c_str(),
                t.value("builtin", false) ? "(built in)" : UtcTime(t.value("created_unix_ms", int64_t{0})).c_str(),
                LimitsText(t.value("limits", Json::object())).c_str(),
                t.value("builtin", false) ? " (its admins act on every tenant)" : "");
  }
  return 0;
}

int RunUsage(ApiOptions args) {
  Json body = Json::object();
  if (!args.key.empty()) body["key_id"] = args.key;
  if (!args.tenant.empty()) body["tenant"] = args.tenant;
  if (!args.model.empty()) body["model"] = args.model;
  if (!args.since.empty()) {
    auto since = ParseSince(args.since);
    if (!since.ok()) return Fail("usage", since.status());
    body["since_unix_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                                (std::chrono::system_clock::now() - *since).time_since_epoch())
                                .count();
  }
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail("usage", client.status());
  auto reply = (*client)->ApiCommand("usage", "", body.dump(), 10s);
  Json parsed;
  if (int done = Handle("usage", reply, args.cluster.json, &parsed); done >= 0) return done;
  std::printf("%-20s %-14s %-16s %-20s %9s %7s %12s %12s\n", "HOUR (UTC)", "KEY", "TENANT", "MODEL", "REQUESTS",
              "ERRORS", "INPUT", "OUTPUT");
  auto line = [](const std::string& hour, const std::string& key, const std::string& tenant, const std::string& model,
                 const Json& c) {
    std::printf("%-20s %-14s %-16s %-20s %9llu %7llu %12llu %12llu\n", hour.c_str(), key.c_str(), tenant.c_str(),
                model.c_str(), static_cast<unsigned long long>(c.value("requests", uint64_t{0})),
                static_cast<unsigned long long>(c.value("errors", uint64_t{0})),
                static_cast<unsigned long long>(c.value("input_tokens", uint64_t{0})),
                static_cast<unsigned long long>(c.value("output_tokens", uint64_t{0})));
  };
  for (const auto& row : parsed.at("rows")) {
    std::string hour = UtcTime(row.value("hour_unix_s", int64_t{0}) * 1000);
    hour = hour.substr(0, hour.size() - 4);  // the header says UTC
    line(hour, row.value("key_id", ""), row.value("tenant", ""), row.value("model", ""), row);
  }
  line("total", "", "", "", parsed.at("totals"));
  return 0;
}

}  // namespace troupe::cli
