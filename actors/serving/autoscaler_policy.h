// AutoscalerPolicy: how many replicas a deployment should run, from its load over time (Knative's
// KPA, docs/serving.md "The autoscaler"). Pure logic over explicit time points: it never reads a
// clock, so every rule is a unit test over a recorded trace (tests/actors/autoscaler_policy_test.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "actors/serving/autoscaling_config.h"
#include "common/clock.h"
#include "common/status.h"

namespace troupe::serving {

/// InvalidArgument naming the field (as the spec's `autoscaling.<field>` or `replicas.<field>`)
/// and the allowed range if `config` cannot work: min <= initial <= max, max >= 1, targets > 0
/// (target_requests_per_second >= 0), windows > 0 with panic_window <= stable_window, tick > 0,
/// panic_threshold > 1, max_scale_up_rate > 1, max_scale_down_rate > 1, delays >= 0.
Status ValidateAutoscalingConfig(const AutoscalingConfig& config);

/// A deployment's total load at one time: the sum of the newest LoadReport of each of its routers
/// and replicas. Queued requests are load: they are what more replicas would serve.
struct Load {
  double ongoing = 0;
  double queued = 0;
  double completed_per_second = 0;
};

/// A scale-down the stable window asks for is made only when the replicas its load asks for
/// (unrounded: load / target) are fewer than (1 - kScaleDownTolerance) x the current count.
/// Without it a steady load at the boundary between two counts (22 requests at 2 a replica
/// against 12 replicas: 11.0 vs 11.1 from tick to tick) made the count flap 12 -> 11 -> 12 within
/// 200 ms (serving_load_test). 0.1 is Kubernetes' HPA default (--horizontal-pod-autoscaler-
/// tolerance); troupe applies it to scale-downs only, so a burst still scales up at once.
inline constexpr double kScaleDownTolerance = 0.1;

/// How long the policy holds the count a deployment started at (rule 0 of AutoscalerPolicy) while
/// fewer replicas than that are ready: Knative's progress-deadline (600 s), within which a revision
/// must reach its initial scale or fail, and the process backend's default ready_timeout, after
/// which the deployment counts a replica's start as failed. Without a bound a deployment whose
/// replicas never become ready (a start that always fails) would be held up, restarting them,
/// forever.
inline constexpr std::chrono::minutes kInitialScaleDeadline{10};

/// The rule that settled a decision (the `reason` label of troupe_serving_autoscaler_decisions_total).
enum class ScaleReason {
  kNoData,            ///< nothing observed yet: the current count, within the bounds
  kStable,            ///< the stable window's average against the target per replica
  kPanic,             ///< panicking: the panic window asked for at least the stable one, or panic holds its highest count
  kScaleUpLimit,      ///< capped at max_scale_up_rate x current
  kScaleDownLimit,    ///< held at current / max_scale_down_rate
  kScaleDownDelay,    ///< a higher decision within scale_down_delay still holds
  kScaleDownTolerance,  ///< the stable window asks for fewer, but within kScaleDownTolerance of the current count
  kScaleToZeroGrace,  ///< no load, but the last replica stays until scale_to_zero_grace passes
  kScaleToZero,       ///< no load for scale_to_zero_grace (min_replicas 0)
  kScaleFromZero,     ///< requests wait and no replica runs: one at once
  kMinReplicas,       ///< raised to min_replicas
  kMaxReplicas,       ///< lowered to max_replicas
  kInitialScale,      ///< held at the count the deployment started at until that many replicas were ready once
};

/// "no_data", "stable", "panic", "scale_up_limit", "scale_down_limit", "scale_down_delay",
/// "scale_down_tolerance", "scale_to_zero_grace", "scale_to_zero", "scale_from_zero", "min_replicas", "max_replicas",
/// "initial_scale".
const char* ScaleReasonName(ScaleReason reason);

/// One decision and what it was made from.
struct Decision {
  uint32_t desired = 0;
  /// Panic mode (scale-ups follow the panic window; no scale-down).
  bool panic = false;
  ScaleReason reason = ScaleReason::kNoData;
  /// One line for logs and events, with the numbers behind the decision.
  std::string reason_text;
  /// Average load (ongoing + queued requests) and completed requests per second over each window.
  double stable_load = 0;
  double panic_load = 0;
  double stable_rps = 0;
  double panic_rps = 0;
  /// What each window's average alone asks for (before rate limits, panic, delay and bounds).
  uint32_t stable_replicas = 0;
  uint32_t panic_replicas = 0;
};

/// The scaling decision of one deployment (Knative's KPA, pkg/autoscaler/scaling/autoscaler.go,
/// with troupe's windows and tick; autoscaling_config.h has the settings and their sources).
///
/// Rules, in the order Decide applies them (current = the count the caller runs, never below 1
/// in ratios):
///  0. Start (Knative's initial scale, knative.dev "Configuring scale bounds": a revision must
///     reach initial-scale once before it can scale below it). The count at the first decision (a
///     new deployment: replicas.initial), and the count at a decision after one with zero
///     replicas (brought up from zero), is the start count. Until that many replicas have been
///     ready at once (`ready_replicas` >= the start count, or >= max_replicas if that is lower),
///     no rule below but the bounds (7) takes the decision under the start count (reason
///     kInitialScale; applied after rule 5), and from the moment they were, not from the deploy,
///     the idle time of rule 4 counts (docs/serving.md, "The start count"). The hold is bounded:
///     once kInitialScaleDeadline has passed since the start without that many ready, it ends and
///     the rules apply as if there had been none (the idle time counts from the start, so a
///     deployment with min_replicas 0 whose replica never became ready and that saw no load goes
///     to zero at once). A start while a hold is pending (the replica that failed to start was
///     removed, count 0, and is replaced) keeps the pending hold and its deadline.
///  1. Each window asks for max(ceil(load / target_ongoing_requests), ceil(rps /
///     target_requests_per_second)) replicas, where load and rps are the window's average of the
///     deployment's *total* load. The total, not the per-replica average times the current count:
///     a scale-up halves the per-replica average, and a policy on that scales straight back down.
///     A window shorter than its length (just started) averages what it has, so a burst right
///     after a deploy still panics.
///  2. Both asks are limited to [floor(current / max_scale_down_rate), ceil(current x
///     max_scale_up_rate)].
///  3. Panic starts when the panic window asks for panic_threshold x current or more; every tick
///     over the threshold renews it, and it ends once a whole stable window has passed since
///     (Knative: the surge has then made its way into the stable average). While panicking the
///     decision is the larger of the two asks and never below the highest one of this panic.
///  4. Scale to zero (min_replicas 0 only): after scale_to_zero_grace without load (no ongoing,
///     queued or completed requests) since the last load (the first sample if none had load) or
///     the moment the start count was ready (rule 0), whichever is later, the count goes to zero;
///     before that a count that would reach zero stays at one.
///  5. A decision lower than one made within scale_down_delay waits: the decision is the highest
///     of that delay window (Knative's scale-down-delay). Then rule 0's hold, if one is pending.
///  6. Zero replicas and requests waiting: at least one, at once (nothing else can serve them).
///  7. Bounds: min_replicas <= desired <= max_replicas.
/// A policy that starts with more than one replica running starts in panic: it has no history,
/// and scaling a deployment it takes over (a restarted head) down on a few samples would drop
/// capacity that is in use.
///
/// Not thread-safe: one owner (the deployment's Autoscaler actor, or a test).
class AutoscalerPolicy {
 public:
  using TimePoint = Clock::TimePoint;

  /// `config` must be valid (ValidateAutoscalingConfig).
  explicit AutoscalerPolicy(const AutoscalingConfig& config);

  /// Records the deployment's total load at `now`. Times never go back: a sample older than the
  /// newest is taken as at the newest time.
  void Observe(TimePoint now, const Load& load);
  /// The replica count for `now`, given that `current_replicas` run (or start) now and
  /// `ready_replicas` of them are ready (serving; at most current_replicas is meaningful, more is
  /// taken as all ready). The ready count ends rule 0's hold.
  Decision Decide(TimePoint now, uint32_t current_replicas, uint32_t ready_replicas);
  /// Decide with every running replica ready: for callers that do not track readiness (the rule
  /// tests over recorded traces), where rule 0's hold ends at once.
  Decision Decide(TimePoint now, uint32_t current_replicas) {
    return Decide(now, current_replicas, current_replicas);
  }

  /// Decides by `config` from now on (`troupe serve update`; must be valid), keeping the load
  /// history, the panic state, rule 0's pending hold and the scale-down delay's recent decisions: an update is no reason
  /// to forget the load, and a policy started afresh would start in panic (rule above) and hold
  /// the count for a stable window. Samples older than the new windows are dropped.
  void Reconfigure(const AutoscalingConfig& config);

  const AutoscalingConfig& config() const { return config_; }

 private:
  struct Sample {
    TimePoint at;
    Load load;
  };
  struct Averages {
    double load = 0;
    double rps = 0;
    bool any = false;
  };
  Averages Average(TimePoint now, std::chrono::milliseconds window) const;
  uint32_t ReplicasFor(const Averages& averages) const;
  // Rule 0: starts, ends or keeps the hold of the start count.
  void TrackStart(TimePoint now, uint32_t current_replicas, uint32_t ready_replicas);

  AutoscalingConfig config_;
  std::deque<Sample> samples_;
  bool decided_ = false;
  // Panic: when the panic window was last over the threshold (nullopt: not panicking), and the
  // highest decision since panic started.
  std::optional<TimePoint> panic_since_;
  uint32_t max_panic_replicas_ = 0;
  // The last time a sample had load; nullopt: none has, since the policy started.
  std::optional<TimePoint> last_load_;
  std::optional<TimePoint> first_sample_;
  // Rule 0: the current count at the last decision (nullopt: none yet); the pending hold (when it
  // started, the start count); when the last hold ended with its count ready.
  std::optional<uint32_t> last_current_;
  struct Start {
    TimePoint at;
    uint32_t replicas = 0;
  };
  std::optional<Start> holding_;
  std::optional<TimePoint> ready_at_;
  // Decisions within scale_down_delay (before bounds), oldest first.
  std::deque<std::pair<TimePoint, uint32_t>> recent_;
};

}  // namespace troupe::serving
