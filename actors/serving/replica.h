// ServingReplica: the actor that serves one replica of a deployment version: it takes
// InferenceRequests from routers, runs them on its backend (the in-process test model,
// test_model.h, or an OpenAI-compatible server as a child process, process_backend.h), streams
// their chunks and answers with their usage (docs/serving.md, "Replicas and the test backend",
// "The process backend").
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "actors/serving/messages.h"
#include "actors/serving/process_backend.h"
#include "actors/serving/test_model.h"
#include "common/clock.h"
#include "runtime/actor_ref.h"

namespace troupe::serving {

/// How a replica is set up (SpawnServingReplica's argument).
struct ReplicaConfig {
  std::string deployment;
  /// "deployment/version/replica-N": in responses (InferenceResponse::replica), load reports,
  /// errors and state changes.
  std::string name;
  /// Requests the replica holds at once; one more is refused with FailedPrecondition ("replica
  /// full; not started"), which a router retries elsewhere (Ray Serve's max_ongoing_requests,
  /// default 5).
  uint32_t max_ongoing_requests = 5;
  /// How long a Drain waits for the requests in flight before it fails them with Unavailable and
  /// stops (Ray Serve's graceful_shutdown_timeout_s, default 20 s). A Drain may give its own.
  std::chrono::milliseconds drain_timeout{20000};
  /// How often LoadReports go to `autoscaler` (the issue: at least every 100 ms).
  std::chrono::milliseconds load_report_interval{100};
  /// How long the first health probe (starting -> ready) may take before the replica gives up
  /// and stops (a backend that never answers).
  std::chrono::milliseconds start_timeout{60000};
  /// Where LoadReports go (empty: none are sent).
  runtime::ActorRef autoscaler;
  /// Who hears of every state change (ReplicaStateChanged; empty: nobody): the deployment actor.
  runtime::ActorRef owner;
  /// The backend: the test model, unless `process` is set.
  TestModelConfig model;
  /// Set: the process backend (process_backend.h): an OpenAI-compatible server started as a
  /// child process, ready once its health path answers 200 within its ready_timeout (which then
  /// replaces start_timeout); its HealthProbe is a GET of that path and then a one-token completion (process_backend.h); the process exiting fails
  /// the requests in flight with Unavailable and stops the replica (ReplicaStateChanged stopped,
  /// the reason naming the exit and the log: its deployment replaces it). `model` and
  /// stall_after_requests are unused.
  std::optional<ProcessBackendConfig> process;
  /// For tests of a stuck backend: after this many requests (health probes included, the first
  /// one at start among them) the test model produces no more tokens; its requests end only by
  /// their deadline, a cancel, or a drain's timeout. 0: never.
  uint32_t stall_after_requests = 0;
  /// Test-backend knobs of the spec's `test:` section (deployment_spec.h TestBackend), for tests
  /// of cold starts and failures; the process backend ignores them. startup_delay: the start
  /// probe begins this long after the spawn, so the replica is `starting` (and refuses requests
  /// as starting) that long at least. fail_every_requests: every n-th request the replica admits
  /// fails with Internal (a 500-class error; probes never fail). crash_after_requests: when the
  /// n-th request it admits arrives, the replica stops with an error exit (its owner sees it
  /// exit and replaces it), failing that request and those in flight with Unavailable. 0: off.
  std::chrono::milliseconds startup_delay{0};
  uint32_t fail_every_requests = 0;
  uint32_t crash_after_requests = 0;
  /// Elapsed times (token pacing, first-token and probe latencies) and wall-clock deadlines
  /// (InferenceRequest::deadline_unix_ms); SteadyClock::Instance() if null. Timers are CAF's, so
  /// a manual clock does not move them: tests use the real clock with short times.
  const Clock* clock = nullptr;
};

/// Spawns a replica (an event-based actor; it never blocks its thread: tokens are paced with
/// delayed messages to itself).
///
/// States (replica_state.h): it starts `starting` and runs a health probe through its backend;
/// when that answers it is `ready` (a probe that fails or exceeds start_timeout stops it).
/// Drain makes it `draining`, then `stopped` once no request is in flight or the drain timeout
/// passed; a stopped replica has exited (normally). An exit message (the deployment killing it)
/// stops it at once. Every change goes to `owner` as ReplicaStateChanged.
///
/// Messages (messages.h):
///   InferenceRequest -> InferenceResponse (usage, first_token_us, replica name), after
///     ResponseChunks 0, 1, 2, ... to `stream_to` when the body says "stream": true and
///     stream_to is set (without stream_to the server-sent events come whole in the body).
///     Errors: FailedPrecondition (starting, draining, full: the request did not start),
///     InvalidArgument (the body: the field and why; `stream` set without `stream_to`),
///     DeadlineExceeded (deadline_unix_ms passed: before the start, or while running, when the
///     work stops), Cancelled (a CancelRequest), Unavailable (stopped while serving it).
///   CancelRequest -> no reply; the request's tokens stop and it is answered Cancelled.
///   Drain -> DrainReply when stopped.  HealthProbe -> HealthProbeReply.
///   ReplicaQuery -> ReplicaStatus.
///   AdoptReplica -> ReplicaStatus: `owner` and `autoscaler` are replaced by the message's (a
///     restarted head's deployment actor took the replica back); the reply is the state now.
/// LoadReports (ongoing requests, completed requests per second since the previous report) go
/// to `autoscaler` every load_report_interval.
caf::actor SpawnServingReplica(caf::actor_system& system, ReplicaConfig config);

}  // namespace troupe::serving
