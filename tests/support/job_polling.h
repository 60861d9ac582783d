// Following a training job from a test through the client: its status, its events, and a wait
// bounded by a deadline for a condition on its status (polling the head; no sleeps).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "actors/training/job_status.h"
#include "cluster/client.h"

namespace troupe {

/// The job's status as `troupe job show` gives it.
inline StatusOr<training::JobStatus> ShowJob(cluster::Client& client, const std::string& name) {
  ASSIGN_OR_RETURN(std::string body, client.JobCommand("show", name, "", std::chrono::seconds(5)));
  return training::JobStatusFromJson(nlohmann::json::parse(body).at("status").dump());
}

/// The job's events as JSON text, or the error's text.
inline std::string JobEvents(cluster::Client& client, const std::string& name) {
  auto body = client.JobCommand("events", name, "", std::chrono::seconds(5));
  return body.ok() ? *body : body.status().ToString();
}

/// Polls the job until `done` holds (true) or `timeout` passes (false); `last` gets the status.
inline bool AwaitJob(cluster::Client& client, const std::string& name, std::chrono::milliseconds timeout,
                     const std::function<bool(const training::JobStatus&)>& done, training::JobStatus* last) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto st = ShowJob(client, name);
    if (st.ok()) {
      *last = *st;
      if (done(*st)) return true;
    }
  }
  return false;
}

}  // namespace troupe
