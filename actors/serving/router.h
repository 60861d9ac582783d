// The router: one actor per deployment and gateway that sends each inference request to a replica
// picked by the deployment's routing policy, queues requests while every replica is full (or none
// is ready yet), retries a refused request once, and reports its load to the autoscaler.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <chrono>
#include <cstdint>
#include <string>

#include "actors/serving/messages.h"
#include "actors/serving/router_metrics.h"
#include "actors/serving/routing_policy.h"
#include "common/clock.h"
#include "runtime/actor_ref.h"

namespace troupe::serving {

/// How a router is set up (SpawnRouter's argument).
struct RouterConfig {
  /// The deployment it routes for; ReplicaSets of another deployment are ignored.
  std::string deployment;
  /// Its LoadReports say "router/<name>".
  std::string name = "0";
  RoutingPolicyKind policy = RoutingPolicyKind::kPowerOfTwoChoices;
  /// Seeds the random and power_of_two_choices policies.
  uint64_t seed = 0;
  /// Requests that may wait for a replica with room; one more is refused with ResourceExhausted
  /// (HTTP 503). troupe's default; Ray Serve's max_queued_requests is unbounded (-1) by default.
  size_t max_queued = 1000;
  /// The deadline of a request that has none (deadline_unix_ms 0): every request has one, so no
  /// request waits forever. troupe's choice.
  std::chrono::milliseconds default_deadline{60000};
  /// How often queued requests are checked against their deadlines (while any are queued): a
  /// queued request fails at most this long after its deadline. Intervals below 1 ms count as 1 ms.
  std::chrono::milliseconds queue_check_interval{10};
  /// How often a LoadReport goes to the autoscaler (the issue: at least every 100 ms).
  std::chrono::milliseconds load_report_interval{100};
  /// Where LoadReports go (empty: nowhere until a SetAutoscaler names one).
  runtime::ActorRef autoscaler;
  /// Deadlines (wall clock, Unix ms) and report times; SteadyClock::Instance() when null.
  const Clock* clock = nullptr;
  /// Where the router publishes its counts every load_report_interval (router_metrics.h; null:
  /// nowhere), under "<deployment>/<name>".
  std::shared_ptr<RouterMetrics> metrics;
};

/// Anyone -> router: send LoadReports to `autoscaler` from now on (an empty ref: stop sending).
struct SetAutoscaler {
  runtime::ActorRef autoscaler;
};

/// Deployment actor -> router: the deployment's routing settings from now on (`troupe serve
/// update` and `rollback`: the router outlives updates, so it must take the new spec's routing,
/// max_queued_requests and request_timeout). The policy is a new one of `policy`, seeded as the
/// first (its rotation and counts start again, as after any new ReplicaSet); requests already
/// queued stay queued even above a lower `max_queued` (only new ones past it are refused); the
/// deadline of requests already admitted stays, `default_deadline` applies to those that come
/// from now on. No reply.
struct ConfigureRouter {
  RoutingPolicyKind policy = RoutingPolicyKind::kPowerOfTwoChoices;
  size_t max_queued = 1000;
  std::chrono::milliseconds default_deadline{60000};
};

/// Anyone -> router: RouterQuery, reply RouterStats (its counts now; for tests and `troupe serve
/// show`).
struct RouterQuery {};
struct RouterStats {
  /// The generation of the ReplicaSet in use (0: none has come).
  uint64_t generation = 0;
  /// Replicas requests may go to.
  uint32_t replicas = 0;
  /// Requests sent to replicas and not answered, and requests waiting in the queue.
  uint32_t ongoing = 0;
  uint32_t queued = 0;
  /// Since the router started: requests answered by a replica (with a response), requests that
  /// ended with an error (any), and requests sent a second time.
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t retried = 0;
};

/// Spawns a router (on the actor system's scheduler; it never blocks).
///
/// Messages it takes:
///   InferenceRequest (a request; reply InferenceResponse or an error): sent on to a replica with
///     room picked by the policy, as a CAF request with the request's deadline as its timeout and
///     the router's own request id (and the deadline in deadline_unix_ms, default_deadline's when
///     the client gave none); the reply goes back with the client's id again. A replica that has
///     not answered by the deadline gets a CancelRequest for it. Streamed
///     requests: the replica sends the ResponseChunks straight to request.stream_to (they carry
///     the router's id for the request, not the client's); the router relays only the final
///     reply. While no replica has room (all at max_ongoing_requests, or none ready: scale from
///     zero) the request waits in a FIFO queue, sent on as replicas free up or arrive.
///   ReplicaSet: replaces the replicas if its generation is newer than the one in use (older or
///     equal ones are ignored). A replica missing from the new set gets no new request; those in
///     flight there finish.
///   SetAutoscaler, ConfigureRouter, RouterQuery (above).
///
/// Errors a client gets (docs/serving.md "Errors"):
///   ResourceExhausted: max_queued requests were waiting already;
///   DeadlineExceeded: the deadline passed while queued or at the replica;
///   FailedPrecondition: the replica refused it (not started: draining, full), and so did the
///     replica it was retried on (a refused request, or one sent to a replica already gone, is
///     sent once more, to another replica, as soon as one has room);
///   Unavailable: the replica died while serving it ("replica X died while serving the
///     request"), or the router stopped;
///   any other error the replica replied with, as it was.
///
/// Replicas are monitored: one that dies is dropped from the table (and not taken back from a
/// later set that still lists it) and its requests in flight fail with Unavailable. With an
/// autoscaler, a LoadReport (ongoing, queued, completed per second) goes to it every
/// load_report_interval. The router ends with an exit message; requests it still holds then fail
/// with Unavailable.
caf::actor SpawnRouter(caf::actor_system& system, RouterConfig config);

}  // namespace troupe::serving

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::SetAutoscaler)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ConfigureRouter)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::RouterQuery)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::RouterStats)
