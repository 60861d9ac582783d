// AutoscalingConfig: how a deployment's replica count follows its load (the deployment spec's
// `replicas` and `autoscaling` sections, docs/serving.md; the policy is autoscaler_policy.h).
// The model is Knative's KPA: a stable window average against a target per replica, and a short
// panic window that scales up on a burst.
#pragma once

#include <chrono>
#include <cstdint>

namespace troupe::serving {

struct AutoscalingConfig {
  /// Bounds on the replica count. min_replicas 0 allows scale to zero: the router holds requests
  /// until the first replica is ready.
  uint32_t min_replicas = 1;
  uint32_t max_replicas = 1;
  /// Replicas started at deploy, before any load was seen (min <= initial <= max).
  uint32_t initial_replicas = 1;
  /// The load one replica should carry: ongoing plus queued requests per replica (Ray Serve's
  /// target_ongoing_requests, default 2; Knative's target concurrency).
  double target_ongoing_requests = 2.0;
  /// Optionally, completed requests per second per replica (0: not used). With both targets the
  /// larger replica count wins.
  double target_requests_per_second = 0.0;
  /// The stable window's length: desired replicas follow this window's average (Knative 60 s).
  std::chrono::milliseconds stable_window{60000};
  /// The panic window's length (Knative 6 s, 10% of the stable window). troupe: 2 s. Loads come
  /// every 100 ms and the policy decides every tick, so a shorter window sees a burst sooner and
  /// its average reaches the burst's full size sooner: after a step from a tenth of one replica's
  /// load to ten replicas' worth, a 2 s window (20 samples) orders new replicas 100 ms after the
  /// step and all ten after 1.8 s, where 6 s takes 500 ms and 5.3 s (tests/actors/
  /// autoscaler_policy_test.cc, StepTo10x...). 20 samples still smooth a single odd report, and
  /// panic only ever scales up.
  std::chrono::milliseconds panic_window{2000};
  /// Panic when the panic window's desired replicas reach this multiple of the current ones
  /// (Knative 200%: 2.0). While panicking the count never goes down.
  double panic_threshold = 2.0;
  /// How often the autoscaler decides (Knative 2 s; troupe decides more often because loads
  /// arrive every 100 ms).
  std::chrono::milliseconds tick{100};
  /// One decision may multiply the count by at most max_scale_up_rate (Knative 1000) and divide
  /// it by at most max_scale_down_rate (Knative 2).
  double max_scale_up_rate = 1000.0;
  double max_scale_down_rate = 2.0;
  /// A lower count is applied only once no higher one was decided within this long: the
  /// decision is the highest of the last scale_down_delay (Knative's scale-down-delay, a maximum
  /// over a time window; 0: at once).
  std::chrono::milliseconds scale_down_delay{0};
  /// With min_replicas 0: how long the last replica stays after the load went to zero (no
  /// ongoing, queued or completed requests reported; Knative's scale-to-zero-grace-period, 30 s),
  /// counted at the earliest from the moment the replicas the deployment started with were ready
  /// (AutoscalerPolicy, rule 0). Then the count goes to zero even if the stable window still
  /// remembers older load.
  std::chrono::milliseconds scale_to_zero_grace{30000};
};

}  // namespace troupe::serving
