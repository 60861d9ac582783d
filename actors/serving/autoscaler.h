// The autoscaler: one actor per deployment that turns the load its routers and replicas report
// into replica counts for the deployment actor (the policy is autoscaler_policy.h; docs/serving.md
// "The autoscaler"), and the metrics of its decisions.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/serving/autoscaler_policy.h"
#include "actors/serving/autoscaling_config.h"
#include "actors/serving/messages.h"
#include "common/clock.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/metrics.h"

namespace troupe::serving {

/// The autoscalers' state as the metrics scrape sees it: each autoscaler of the process writes its
/// deployment's entry after every tick; the scrape thread reads them (thread-safe).
class AutoscalerMetrics {
 public:
  /// The decision of one tick, made for `current` replicas of which `ready` are ready: gauges
  /// always, and `sent` counts it in decisions_total (a decision that went to the deployment actor).
  void Record(const std::string& deployment, const Decision& decision, uint32_t current, uint32_t ready,
              size_t sources, bool sent);
  /// Forgets a deployment's series (its autoscaler ended).
  void Remove(const std::string& deployment);
  /// Appends the families below, labelled deployment="<name>":
  ///   troupe_serving_autoscaler_desired_replicas, troupe_serving_autoscaler_current_replicas
  ///   (gauges, the last tick's decision and the count the deployment actor last reported);
  ///   troupe_serving_autoscaler_ready_replicas (gauge, how many of those it said were ready);
  ///   troupe_serving_autoscaler_panic (gauge, 1 while panicking);
  ///   troupe_serving_autoscaler_load_requests{window="stable"|"panic"} (gauge, the window's
  ///   average of ongoing plus queued requests);
  ///   troupe_serving_autoscaler_load_sources (gauge, routers and replicas whose reports count);
  ///   troupe_serving_autoscaler_decisions_total{reason} (counter, decisions sent to the
  ///   deployment actor, by ScaleReasonName).
  void Collect(std::vector<prometheus::MetricFamily>& out) const;

 private:
  struct Entry {
    Decision decision;
    uint32_t current = 0;
    uint32_t ready = 0;
    size_t sources = 0;
    std::map<std::string, uint64_t> sent_by_reason;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

/// The scrape source of the process's autoscalers (MetricsServer::AddSource).
runtime::MetricsSource AutoscalerMetricsSource(std::shared_ptr<AutoscalerMetrics> metrics);

/// How an autoscaler is set up (SpawnAutoscaler's argument).
struct AutoscalerInit {
  std::string deployment;
  /// Must pass ValidateAutoscalingConfig. `tick` is how often it decides.
  AutoscalingConfig config;
  /// The deployment actor: ScaleDecisions go there.
  runtime::ActorRef target;
  /// The time of load reports and decisions (the runtime's clock, Runtime::clock()); ticks are
  /// CAF timers of config.tick. SteadyClock::Instance() when null.
  const Clock* clock = nullptr;
  /// A source (router or replica) whose newest report is older than this no longer counts: it
  /// stopped or died, and its last load must not hold the count up. Sources report every 100 ms
  /// at least (messages.h), so 1 s is ten missed reports: troupe's choice, long enough for a
  /// busy mailbox, short against the 60 s stable window.
  std::chrono::milliseconds source_timeout{1000};
  /// Where decisions are exported (null: nowhere).
  std::shared_ptr<AutoscalerMetrics> metrics;
};

/// Deployment actor -> autoscaler: decide by `config` from now on (`troupe serve update` and
/// `rollback`: targets, windows, rates, bounds, tick), keeping the load history
/// (AutoscalerPolicy::Reconfigure). A config that fails ValidateAutoscalingConfig is refused with
/// an error log line and the old one stays (the head validated the spec before). No reply.
struct ConfigureAutoscaler {
  AutoscalingConfig config;
};

/// Spawns the autoscaler of one deployment (on the actor system's scheduler; it never blocks).
/// InvalidArgument (naming the field) if init.config is not valid, or if it has no target.
///
/// Messages it takes:
///   LoadReport (from routers and replicas): the newest report per source is kept; reports of
///     another deployment are dropped.
///   ReplicaCount (from the deployment actor): the replicas running now and how many of them are
///     ready. Until the first one, the count is config.initial_replicas (what the deployment
///     starts with) and none is ready. The ready count goes to the policy with the count: until
///     the count the deployment started at (or was brought up from zero to) has been ready once,
///     no decision goes below it, and the idle grace of scale to zero counts from then
///     (AutoscalerPolicy, rule 0; at most kInitialScaleDeadline).
///   ConfigureAutoscaler (above).
///   caf::exit_msg / a down target: it ends (it monitors the target).
///
/// Every tick it sums the live sources' load and feeds it to the policy: routers and replicas see
/// the same requests (a request a router sent is ongoing at both), so ongoing requests and
/// completions per second are the larger of the routers' sum and the replicas' sum, not their
/// total, and queued requests are the routers' sum (only routers queue). Sources named
/// "router/..." are routers, any other a replica. With no live source it observes nothing (the
/// policy keeps the count: no data is no reason to scale).
///
/// It sends ScaleDecision{deployment, desired, current, panic, reason text} to the target when
/// desired differs from current, or panic mode changed, unless it sent that same decision for
/// that same count before (the deployment actor keeps the last one; a count it has not reached
/// yet is not ordered again every tick). Each sent decision is an info log line and is counted in
/// the metrics; every tick updates the gauges.
StatusOr<caf::actor> SpawnAutoscaler(caf::actor_system& system, AutoscalerInit init);

/// The load the autoscaler feeds the policy from the newest reports of its live sources (see
/// SpawnAutoscaler).
Load CombineLoad(const std::map<std::string, LoadReport>& reports);

}  // namespace troupe::serving

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ConfigureAutoscaler)
