// troupe audit.
#include "cli/audit_commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "cli/json_output.h"
#include "cluster/client.h"

namespace troupe::cli {

using namespace std::chrono_literals;

namespace {

int Fail(const Status& status) {
  std::cerr << "troupe audit: " << status.message() << "\n";
  return 1;
}

// --since: "YYYY-MM-DD" (UTC midnight), "Nd" (days), or any duration ParseDuration takes, back
// from now. Milliseconds since the Unix epoch.
StatusOr<int64_t> SinceUnixMs(const std::string& text) {
  const int64_t now =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::tm date{};
  if (const char* end = strptime(text.c_str(), "%Y-%m-%d", &date); end != nullptr && *end == '\0') {
    return static_cast<int64_t>(timegm(&date)) * 1000;
  }
  if (text.size() > 1 && text.size() <= 6 && text.back() == 'd' &&
      text.find_first_not_of("0123456789") == text.size() - 1) {
    return now - std::stoll(text) * 24 * 3600 * 1000;
  }
  auto d = cluster::ParseDuration(text);
  if (!d.ok()) {
    return InvalidArgumentError("--since '" + text + "': " + d.status().message() +
                                " (or days, such as 7d, or a UTC date, such as 2026-11-30)");
  }
  return now - d->count();
}

std::string UtcSeconds(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%d %H:%M:%S", &tm);
  return out;
}

}  // namespace

int RunAudit(AuditOptions args) {
  int64_t since = 0;
  if (!args.since.empty()) {
    auto parsed = SinceUnixMs(args.since);
    if (!parsed.ok()) return Fail(parsed.status());
    since = *parsed;
  }
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail(client.status());
  auto reply = (*client)->Audit(since, args.verify, 30s);
  if (!reply.ok()) return Fail(reply.status());
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(*reply, nullptr, false);
  if (j.is_discarded() || !j.contains("records")) {
    return Fail(InternalError("the head's reply is not the audit log's JSON: " + reply->substr(0, 200)));
  }
  const bool broken = args.verify && !j["verification"].value("ok", false);
  if (args.cluster.json) {
    std::cout << OneLineJson(j) << std::endl;
    return broken ? 1 : 0;
  }
  std::printf("%6s  %-23s %-28s %-20s %-24s %s\n", "SEQ", "TIME (UTC)", "WHO", "ACTION", "TARGET", "RESULT");
  for (const auto& r : j["records"]) {
    std::printf("%6llu  %-23s %-28s %-20s %-24s %s\n", static_cast<unsigned long long>(r.value("seq", uint64_t{0})),
                UtcSeconds(r.value("at_unix_ms", int64_t{0})).c_str(), r.value("who", "").c_str(),
                r.value("action", "").c_str(), r.value("target", "").c_str(), r.value("result", "").c_str());
  }
  if (j["records"].empty()) std::printf("no records%s\n", args.since.empty() ? "" : " in that time");
  if (const uint64_t omitted = j.value("omitted", uint64_t{0}); omitted > 0) {
    std::printf("(%llu older records not shown: ask for fewer with --since)\n", static_cast<unsigned long long>(omitted));
  }
  if (!args.verify) return 0;
  const auto& v = j["verification"];
  if (broken) {
    std::printf("%s\n", v.value("problem", "").c_str());
    return 1;
  }
  const uint64_t anchor = v["anchor"].value("seq", uint64_t{0});
  std::printf("chain verified: %llu records%s, newest %llu (hash %s)\n",
              static_cast<unsigned long long>(v.value("records", uint64_t{0})),
              anchor == 0 ? "" : (" after the pruned ones up to " + std::to_string(anchor)).c_str(),
              static_cast<unsigned long long>(v["tip"].value("seq", uint64_t{0})),
              v["tip"].value("hash", "").c_str());
  return 0;
}

}  // namespace troupe::cli
