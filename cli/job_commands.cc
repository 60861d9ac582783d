// troupe job.
#include "cli/job_commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <thread>

#include "actors/training/job_spec.h"
#include "actors/training/job_status.h"
#include "cli/json_output.h"
#include "cluster/client.h"

namespace troupe::cli {

using namespace std::chrono_literals;
using Json = nlohmann::json;

namespace {

int Fail(const std::string& what, const Status& status) {
  std::cerr << "troupe job " << what << ": " << status.message() << "\n";
  return 1;
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const int64_t s = (now - unix_ms) / 1000;
  if (s < 120) return std::to_string(s) + "s ago";
  if (s < 7200) return std::to_string(s / 60) + "m ago";
  return std::to_string(s / 3600) + "h ago";
}

void PrintStatus(const training::JobStatus& st) {
  std::printf("job %s: %s%s%s\n", st.name.c_str(), st.state.c_str(), st.reason.empty() ? "" : ": ",
              st.reason.c_str());
  std::printf("  attempt %llu, failures: %u user, %u infrastructure; newest checkpoint: %s\n",
              static_cast<unsigned long long>(st.attempt), st.user_failures, st.infra_failures,
              st.checkpoint_step < 0 ? "none" : ("step " + std::to_string(st.checkpoint_step)).c_str());
  std::printf("  submitted %s, attempt started %s%s\n", Ago(st.submitted_unix_ms).c_str(), Ago(st.started_unix_ms).c_str(),
              st.finished_unix_ms ? (", finished " + Ago(st.finished_unix_ms)).c_str() : "");
  for (const auto& w : st.workers) {
    std::printf("  rank %u on %s, pid %lld, log %s\n", w.rank, w.node.c_str(), static_cast<long long>(w.pid),
                w.log_path.c_str());
  }
}

StatusOr<training::JobStatus> Show(cluster::Client& client, const std::string& name) {
  ASSIGN_OR_RETURN(std::string body, client.JobCommand("show", name, "", 5s));
  try {
    return training::JobStatusFromJson(Json::parse(body).at("status").dump());
  } catch (const std::exception& e) {
    return InternalError(std::string("the head's reply does not decode: ") + e.what());
  }
}

// Prints every line of the job's workers' logs (of its current attempt); with `follow`, goes on
// until the job is final.
int Logs(cluster::Client& client, const JobOptions& args) {
  std::map<uint32_t, uint64_t> offsets;
  uint64_t attempt = 0;
  for (;;) {
    auto st = Show(client, args.target);
    if (!st.ok()) return Fail("logs", st.status());
    if (st->attempt != attempt) {
      attempt = st->attempt;
      offsets.clear();
    }
    bool more = false;
    for (const auto& w : st->workers) {
      if (args.worker >= 0 && w.rank != static_cast<uint32_t>(args.worker)) continue;
      for (int chunk_count = 0; chunk_count < 1000; ++chunk_count) {
        training::ReadWorkerLog read{args.target, st->attempt, w.rank, offsets[w.rank], 64 * 1024};
        auto chunk = client.ReadWorkerLog(w.node, read, 5s);
        if (!chunk.ok()) {
          std::cerr << "troupe job logs: rank " << w.rank << " on " << w.node << ": " << chunk.status().message() << "\n";
          break;
        }
        std::string prefix = args.worker >= 0 ? "" : "[rank " + std::to_string(w.rank) + "] ";
        size_t start = 0;
        const std::string& d = chunk->data;
        while (start < d.size()) {
          size_t nl = d.find('\n', start);
          if (nl == std::string::npos) nl = d.size();
          std::cout << prefix << d.substr(start, nl - start) << "\n";
          start = nl + 1;
        }
        offsets[w.rank] = chunk->next_offset;
        more = more || chunk->running;
        if (chunk->next_offset >= chunk->size) break;
      }
    }
    std::cout.flush();
    if (!args.follow || (training::IsFinal(st->state) && !more)) return 0;
    std::this_thread::sleep_for(250ms);  // a poll interval, not a wait for a condition
  }
}

int Wait(cluster::Client& client, const std::string& name, bool json) {
  std::string last;
  for (;;) {
    auto st = Show(client, name);
    if (!st.ok()) return Fail("submit", st.status());
    const std::string line = st->state + (st->reason.empty() ? "" : ": " + st->reason);
    if (line != last && !json) std::printf("job %s: %s\n", name.c_str(), line.c_str());
    std::fflush(stdout);
    last = line;
    if (training::IsFinal(st->state)) {
      if (json) std::cout << OneLineJson(nlohmann::ordered_json::parse(training::JobStatusToJson(*st))) << std::endl;
      return st->state == training::kJobSucceeded ? 0 : 1;
    }
    std::this_thread::sleep_for(200ms);  // a poll interval, not a wait for a condition
  }
}

}  // namespace

int RunJob(JobOptions args) {
  training::JobSpec spec;
  if (args.action == "submit") {
    // The spec is checked before the cluster is contacted: a bad one starts nothing.
    auto loaded = training::LoadJobSpec(args.target);
    if (!loaded.ok()) return Fail("submit", loaded.status());
    spec = std::move(*loaded);
  }
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail(args.action, client.status());
  cluster::Client& c = **client;
  const bool json = args.cluster.json;
  if (args.action == "submit") {
    auto st = c.SubmitJob(spec, 10s);
    if (!st.ok()) return Fail("submit", st.status());
    if (args.wait) return Wait(c, spec.name, json);
    if (json) {
      std::cout << OneLineJson(nlohmann::ordered_json::parse(training::JobStatusToJson(*st))) << std::endl;
    } else {
      std::printf("job %s submitted: %s (%s)\n", st->name.c_str(), st->state.c_str(), st->reason.c_str());
    }
    return 0;
  }
  if (args.action == "logs") return Logs(c, args);
  auto reply = c.JobCommand(args.action, args.target, "", 10s);
  if (!reply.ok()) return Fail(args.action, reply.status());
  if (json) {
    std::cout << OneLineJson(nlohmann::ordered_json::parse(*reply)) << std::endl;
    return 0;
  }
  auto parsed = Json::parse(*reply);
  if (args.action == "list") {
    std::printf("%-24s %-11s %7s %10s  %s\n", "NAME", "STATE", "ATTEMPT", "CHECKPOINT", "REASON");
    for (const auto& j : parsed) {
      auto st = training::JobStatusFromJson(j.at("status").dump());
      if (!st.ok()) continue;
      std::printf("%-24s %-11s %7llu %10s  %s\n", st->name.c_str(), st->state.c_str(),
                  static_cast<unsigned long long>(st->attempt),
                  st->checkpoint_step < 0 ? "-" : std::to_string(st->checkpoint_step).c_str(), st->reason.c_str());
    }
    if (parsed.empty()) std::printf("no jobs\n");
    return 0;
  }
  if (args.action == "events") {
    for (const auto& j : parsed) {
      std::printf("%lld attempt %llu %-10s %s\n", static_cast<long long>(j.value("unix_ms", int64_t{0})),
                  static_cast<unsigned long long>(j.value("attempt", uint64_t{0})), j.value("state", "").c_str(),
                  j.value("message", "").c_str());
    }
    return 0;
  }
  auto st = training::JobStatusFromJson((parsed.contains("status") ? parsed.at("status") : parsed).dump());
  if (!st.ok()) return Fail(args.action, st.status());
  if (args.action == "show") {
    PrintStatus(*st);
  } else {
    std::printf("job %s: %s requested (now %s)\n", st->name.c_str(), args.action.c_str(), st->state.c_str());
  }
  return 0;
}

int RunModel(JobOptions args) {
  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail("model", client.status());
  auto reply = (*client)->JobCommand("models", args.target, "", 10s);
  if (!reply.ok()) {
    std::cerr << "troupe model " << args.action << ": " << reply.status().message() << "\n";
    return 1;
  }
  if (args.cluster.json) {
    std::cout << OneLineJson(nlohmann::ordered_json::parse(*reply)) << std::endl;
    return 0;
  }
  auto list = Json::parse(*reply);
  std::printf("%-24s %7s %-24s %8s %12s  %s\n", "MODEL", "VERSION", "JOB", "STEP", "BYTES", "REGISTERED");
  for (const auto& v : list) {
    std::printf("%-24s %7llu %-24s %8llu %12llu  %s\n", v.value("model", "").c_str(),
                static_cast<unsigned long long>(v.value("version", uint64_t{0})), v.value("job", "").c_str(),
                static_cast<unsigned long long>(v.value("step", uint64_t{0})),
                static_cast<unsigned long long>(v.value("total_bytes", uint64_t{0})),
                Ago(v.value("unix_ms", int64_t{0})).c_str());
    if (args.action == "show") std::printf("  files: %s (manifest sha256 %s)\n", v.value("dir", "").c_str(),
                                           v.value("manifest_sha256", "").c_str());
  }
  if (list.empty()) std::printf("no models\n");
  return 0;
}

}  // namespace troupe::cli
