// AutoscalerPolicy against recorded load traces (tests/actors/autoscaler_traces/*.csv), replayed
// on a manual time line: every tick the trace's load then is observed and a decision made, and
// the replicas decided are running at the next tick (as the deployment actor would report them).
#include "actors/serving/autoscaler_policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace troupe::serving {
namespace {

using std::chrono::milliseconds;
using TimePoint = AutoscalerPolicy::TimePoint;

const TimePoint kStart = TimePoint(std::chrono::hours(1));

struct Row {
  int64_t ms = 0;
  Load load;
};

// The trace `name`: rows after the comment lines (#) and the column header.
std::vector<Row> LoadTrace(const std::string& name) {
  const std::string path = std::string(TROUPE_SOURCE_DIR) + "/tests/actors/autoscaler_traces/" + name;
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot open the trace " << path;
  std::vector<Row> rows;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] == '#' || line.rfind("time_ms,", 0) == 0) continue;
    Row row;
    char c1 = 0, c2 = 0, c3 = 0;
    std::istringstream fields(line);
    fields >> row.ms >> c1 >> row.load.ongoing >> c2 >> row.load.queued >> c3 >> row.load.completed_per_second;
    EXPECT_TRUE(fields && c1 == ',' && c2 == ',' && c3 == ',')
        << path << ":" << number << ": expected time_ms,ongoing,queued,completed_per_second, got '" << line << "'";
    EXPECT_TRUE(rows.empty() || row.ms > rows.back().ms) << path << ":" << number << ": time_ms must grow";
    rows.push_back(row);
  }
  EXPECT_GE(rows.size(), 2u) << path << ": a trace has a start and an end row";
  return rows;
}

struct Tick {
  int64_t ms = 0;
  uint32_t current = 0;
  Decision decision;
};

// Replays `rows` tick by tick from 0 to the last row's time.
std::vector<Tick> Replay(const AutoscalingConfig& config, const std::vector<Row>& rows, uint32_t current) {
  AutoscalerPolicy policy(config);
  std::vector<Tick> ticks;
  size_t row = 0;
  for (int64_t ms = 0; !rows.empty() && ms <= rows.back().ms; ms += config.tick.count()) {
    while (row + 1 < rows.size() && rows[row + 1].ms <= ms) ++row;
    policy.Observe(kStart + milliseconds(ms), rows[row].load);
    Decision d = policy.Decide(kStart + milliseconds(ms), current);
    ticks.push_back({ms, current, d});
    current = d.desired;
  }
  return ticks;
}

// How often the decided count turns from rising to falling or back.
int DirectionChanges(const std::vector<uint32_t>& counts) {
  int changes = 0, last = 0;
  for (size_t i = 1; i < counts.size(); ++i) {
    int dir = counts[i] > counts[i - 1] ? 1 : counts[i] < counts[i - 1] ? -1 : 0;
    if (dir == 0) continue;
    if (last != 0 && dir != last) ++changes;
    last = dir;
  }
  return changes;
}

std::vector<uint32_t> Desired(const std::vector<Tick>& ticks) {
  std::vector<uint32_t> out;
  for (const auto& t : ticks) out.push_back(t.decision.desired);
  return out;
}

// The first tick at or after `from_ms` whose decision satisfies `pred`, or nullptr.
template <class Pred>
const Tick* First(const std::vector<Tick>& ticks, int64_t from_ms, Pred pred) {
  for (const auto& t : ticks) {
    if (t.ms >= from_ms && pred(t)) return &t;
  }
  return nullptr;
}

AutoscalingConfig Scalable(uint32_t min, uint32_t max, uint32_t initial) {
  AutoscalingConfig config;
  config.min_replicas = min;
  config.max_replicas = max;
  config.initial_replicas = initial;
  return config;
}

// The first decision of a new policy that has seen `load` once.
Decision DecideOnce(const AutoscalingConfig& config, const Load& load, uint32_t current) {
  AutoscalerPolicy policy(config);
  policy.Observe(kStart, load);
  return policy.Decide(kStart, current);
}

// The target: a QPS step from a tenth of one replica's load to ten replicas' worth orders
// new replicas within 1 s, with the default settings (only the bounds opened up).
TEST(AutoscalerPolicy, StepTo10xOrdersReplicasWithinOneSecond) {
  const auto rows = LoadTrace("step_10x.csv");
  const int64_t step_ms = 10000;
  auto measure = [&](const AutoscalingConfig& config, int64_t* full_ms) {
    auto ticks = Replay(config, rows, 1);
    for (const auto& t : ticks) {
      if (t.ms < step_ms) {
        EXPECT_EQ(t.decision.desired, 1u) << "before the step, at " << t.ms << " ms";
      }
    }
    const Tick* ordered = First(ticks, step_ms, [](const Tick& t) { return t.decision.desired > 1; });
    const Tick* full = First(ticks, step_ms, [](const Tick& t) { return t.decision.desired >= 10; });
    EXPECT_NE(ordered, nullptr);
    EXPECT_NE(full, nullptr);
    *full_ms = full ? full->ms - step_ms : -1;
    if (ordered) {
      EXPECT_TRUE(ordered->decision.panic) << ordered->decision.reason_text;
    }
    return ordered ? ordered->ms - step_ms : -1;
  };
  int64_t full_ms = 0, knative_full_ms = 0;
  const int64_t ordered_ms = measure(Scalable(1, 20, 1), &full_ms);
  AutoscalingConfig knative = Scalable(1, 20, 1);
  knative.panic_window = milliseconds(6000);
  const int64_t knative_ms = measure(knative, &knative_full_ms);
  std::printf("10x step: new replicas ordered %lld ms after the step, ten replicas after %lld ms (target <= 1000 ms; "
              "the same policy with Knative's 6 s panic window: %lld ms and %lld ms; Knative with its 2 s tick: 2-6 s, "
              "Ray Serve defaults: about 40 s)\n",
              static_cast<long long>(ordered_ms), static_cast<long long>(full_ms), static_cast<long long>(knative_ms),
              static_cast<long long>(knative_full_ms));
  EXPECT_GE(ordered_ms, 0);
  EXPECT_LE(ordered_ms, 1000);
}

// Panic scales up on a short spike and never scales down while panicking; panic lasts a stable
// window after the last tick over the threshold, then the count returns to what the load needs.
TEST(AutoscalerPolicy, ShortSpikePanicsUpAndHoldsForTheStableWindow) {
  AutoscalingConfig config = Scalable(1, 20, 1);
  config.target_ongoing_requests = 10;
  const auto ticks = Replay(config, LoadTrace("spike.csv"), 1);
  const Tick* panic = First(ticks, 0, [](const Tick& t) { return t.decision.panic; });
  ASSERT_NE(panic, nullptr) << "the 6x spike never panicked";
  EXPECT_GE(panic->ms, 5000);
  EXPECT_LE(panic->ms, 5300) << panic->decision.reason_text;
  int64_t last_panic_ms = 0;
  uint32_t highest = 0;
  for (const auto& t : ticks) {
    if (t.decision.panic) last_panic_ms = t.ms;
    highest = std::max(highest, t.decision.desired);
  }
  EXPECT_GE(highest, 3u);
  // No scale-down from the panic's start until a stable window after its last renewal.
  uint32_t previous = 0;
  for (const auto& t : ticks) {
    if (t.ms < panic->ms || t.ms > last_panic_ms) continue;
    EXPECT_GE(t.decision.desired, previous) << "scaled down while panicking at " << t.ms << " ms: "
                                            << t.decision.reason_text;
    previous = t.decision.desired;
  }
  EXPECT_GE(last_panic_ms, panic->ms + config.stable_window.count() - config.tick.count());
  EXPECT_EQ(ticks.back().decision.desired, 1u) << ticks.back().decision.reason_text;
  EXPECT_FALSE(ticks.back().decision.panic);
  EXPECT_EQ(DirectionChanges(Desired(ticks)), 1) << "up once, down once";
}

// A ramp that never doubles the load within a panic window follows the stable window, without
// panic and without ever scaling down.
TEST(AutoscalerPolicy, SlowRampFollowsTheStableWindowWithoutPanic) {
  AutoscalingConfig config = Scalable(1, 20, 3);
  config.target_ongoing_requests = 10;
  const auto ticks = Replay(config, LoadTrace("slow_ramp.csv"), 3);
  for (const auto& t : ticks) {
    // The first stable window is the start-in-panic rule (tested on its own below).
    if (t.ms > config.stable_window.count()) {
      EXPECT_FALSE(t.decision.panic) << "at " << t.ms << " ms: " << t.decision.reason_text;
    }
  }
  EXPECT_EQ(DirectionChanges(Desired(ticks)), 0);
  EXPECT_EQ(ticks.back().decision.desired, 6u) << ticks.back().decision.reason_text;
}

// A test-only naive policy: the per-replica load averaged over the panic window, times the
// current count. Each scale-up lowers the per-replica samples while older, higher ones are still
// in the window, so it overshoots, then scales straight back down. (Over the 60 s stable window
// it overshoots to 18 replicas where 5 do, and comes down slowly.)
class NaivePolicy {
 public:
  explicit NaivePolicy(const AutoscalingConfig& config) : config_(config) {}
  uint32_t Decide(TimePoint now, const Load& load, uint32_t current) {
    samples_.push_back({now, (load.ongoing + load.queued) / std::max<uint32_t>(1, current)});
    double sum = 0;
    size_t n = 0;
    for (const auto& [at, per_replica] : samples_) {
      if (at > now - config_.panic_window) sum += per_replica, ++n;
    }
    double want = std::ceil(sum / n * std::max<uint32_t>(1, current) / config_.target_ongoing_requests - 1e-9);
    return static_cast<uint32_t>(std::clamp<double>(want, config_.min_replicas, config_.max_replicas));
  }

 private:
  AutoscalingConfig config_;
  std::vector<std::pair<TimePoint, double>> samples_;
};

// The rule of using the window's total load against the target per replica: a scale-up that
// halves the per-replica average must not make the count oscillate (the naive policy on the
// same trace does, which shows the trace can tell).
TEST(AutoscalerPolicy, HalvedPerReplicaAverageDoesNotOscillate) {
  AutoscalingConfig config = Scalable(1, 20, 1);
  config.target_ongoing_requests = 10;
  const auto rows = LoadTrace("halving_average.csv");
  const auto ticks = Replay(config, rows, 1);
  const auto counts = Desired(ticks);
  EXPECT_EQ(DirectionChanges(counts), 0);
  EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), 5u) << "overshot";
  EXPECT_EQ(ticks.back().decision.desired, 5u) << ticks.back().decision.reason_text;

  NaivePolicy naive(config);
  std::vector<uint32_t> naive_counts;
  uint32_t current = 1;
  size_t row = 0;
  for (int64_t ms = 0; ms <= rows.back().ms; ms += config.tick.count()) {
    while (row + 1 < rows.size() && rows[row + 1].ms <= ms) ++row;
    current = naive.Decide(kStart + milliseconds(ms), rows[row].load, current);
    naive_counts.push_back(current);
  }
  EXPECT_GE(DirectionChanges(naive_counts), 2) << "the trace no longer makes a naive policy oscillate";
}

// A load drop after a burst: panic holds the burst's count for a stable window; then lower counts
// wait out scale_down_delay (the decision is the highest of the delay window), and one decision
// divides the count by at most max_scale_down_rate.
TEST(AutoscalerPolicy, LoadDropScalesDownAfterTheDelayAndAtMostHalvingPerStep) {
  AutoscalingConfig config = Scalable(1, 20, 1);
  config.target_ongoing_requests = 10;
  config.scale_down_delay = milliseconds(10000);
  const auto ticks = Replay(config, LoadTrace("load_drop.csv"), 1);
  int64_t last_panic_ms = 0;
  for (const auto& t : ticks) {
    if (t.decision.panic) last_panic_ms = t.ms;
  }
  ASSERT_GT(last_panic_ms, 0) << "the burst did not panic";
  const Tick* first_down = First(ticks, 0, [](const Tick& t) { return t.decision.desired < t.current; });
  ASSERT_NE(first_down, nullptr);
  EXPECT_EQ(first_down->current, 10u);
  EXPECT_EQ(first_down->ms, last_panic_ms + config.scale_down_delay.count()) << first_down->decision.reason_text;
  int64_t last_down_ms = 0;
  int downs = 0;
  for (const auto& t : ticks) {
    if (t.decision.desired >= t.current) continue;
    ++downs;
    EXPECT_GE(t.decision.desired, t.current / 2) << "at " << t.ms << " ms: " << t.decision.reason_text;
    if (last_down_ms) {
      EXPECT_GE(t.ms - last_down_ms, config.scale_down_delay.count()) << "at " << t.ms << " ms";
    }
    last_down_ms = t.ms;
  }
  EXPECT_EQ(downs, 3) << "10 -> 5 -> 2 -> 1";
  EXPECT_EQ(ticks.back().decision.desired, 1u);
  EXPECT_EQ(DirectionChanges(Desired(ticks)), 1) << "up once, down once";
}

// Scale to zero: the last replica stays for scale_to_zero_grace after the load ended; three
// requests queued with no replica running order one at the very next tick.
TEST(AutoscalerPolicy, ScalesToZeroAfterTheGraceAndBackAtOnceWhenRequestsQueue) {
  AutoscalingConfig config = Scalable(0, 5, 1);
  const auto ticks = Replay(config, LoadTrace("scale_to_zero.csv"), 1);
  const int64_t last_load_ms = 9900;  // the last tick that saw requests
  const Tick* zero = First(ticks, 0, [](const Tick& t) { return t.decision.desired == 0; });
  ASSERT_NE(zero, nullptr);
  EXPECT_EQ(zero->ms, last_load_ms + config.scale_to_zero_grace.count()) << zero->decision.reason_text;
  EXPECT_EQ(zero->decision.reason, ScaleReason::kScaleToZero);
  const Tick* grace = First(ticks, 10000, [](const Tick& t) { return t.decision.desired == 1; });
  ASSERT_NE(grace, nullptr);
  EXPECT_LT(grace->ms, zero->ms);
  const Tick* back = First(ticks, zero->ms, [](const Tick& t) { return t.decision.desired > 0; });
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->ms, 50000) << "the first tick with queued requests";
  EXPECT_EQ(back->current, 0u);
  EXPECT_EQ(back->decision.reason, ScaleReason::kScaleFromZero) << back->decision.reason_text;
}

// Bounds: min_replicas and max_replicas hold whatever the load asks.
TEST(AutoscalerPolicy, BoundsHoldAtBothEnds) {
  AutoscalingConfig config = Scalable(2, 4, 2);
  const auto ticks = Replay(config, LoadTrace("step_10x.csv"), 1);
  for (const auto& t : ticks) {
    EXPECT_GE(t.decision.desired, 2u);
    EXPECT_LE(t.decision.desired, 4u);
  }
  EXPECT_EQ(ticks[0].decision.desired, 2u) << "raised at once";
  EXPECT_EQ(ticks[50].decision.reason, ScaleReason::kMinReplicas) << ticks[50].decision.reason_text;
  EXPECT_EQ(ticks.back().decision.desired, 4u);
  EXPECT_EQ(ticks.back().decision.reason, ScaleReason::kMaxReplicas) << ticks.back().decision.reason_text;
}

// One decision multiplies the count by at most max_scale_up_rate.
TEST(AutoscalerPolicy, ScaleUpRateCapsOneDecision) {
  AutoscalingConfig config = Scalable(1, 100, 1);
  config.max_scale_up_rate = 2;
  Decision d = DecideOnce(config, Load{100, 0, 0}, 3);
  EXPECT_EQ(d.desired, 6u) << d.reason_text;
  EXPECT_EQ(d.reason, ScaleReason::kScaleUpLimit);
  EXPECT_EQ(d.panic_replicas, 50u);
}

// A policy without history that finds several replicas running starts in panic: it holds them
// for a stable window instead of scaling down on its first samples (Knative does the same).
TEST(AutoscalerPolicy, StartsInPanicWithSeveralReplicasRunning) {
  AutoscalingConfig config = Scalable(1, 10, 4);
  AutoscalerPolicy policy(config);
  Decision d;
  for (int64_t ms = 0; ms < config.stable_window.count(); ms += 100) {
    policy.Observe(kStart + milliseconds(ms), Load{});
    d = policy.Decide(kStart + milliseconds(ms), 4);
    ASSERT_EQ(d.desired, 4u) << "at " << ms << " ms: " << d.reason_text;
    ASSERT_TRUE(d.panic);
  }
  policy.Observe(kStart + config.stable_window, Load{});
  d = policy.Decide(kStart + config.stable_window, 4);
  EXPECT_FALSE(d.panic);
  EXPECT_EQ(d.desired, 2u) << "at most halved: " << d.reason_text;

  AutoscalerPolicy single(config);
  single.Observe(kStart, Load{});
  EXPECT_FALSE(single.Decide(kStart, 1).panic);
}

// An update's settings (Reconfigure) apply to the load already observed: a new target per replica
// and new bounds change the next decision at once, with no window to fill again.
TEST(AutoscalerPolicy, ReconfigureKeepsTheHistoryAndAppliesTheNewTargetAndBounds) {
  AutoscalingConfig config = Scalable(1, 10, 1);
  config.target_ongoing_requests = 10;
  AutoscalerPolicy policy(config);
  for (int64_t ms = 0; ms <= 1000; ms += 100) policy.Observe(kStart + milliseconds(ms), Load{4, 0, 0});
  Decision d = policy.Decide(kStart + milliseconds(1000), 1);
  ASSERT_EQ(d.desired, 1u) << d.reason_text;
  config.target_ongoing_requests = 1;
  config.max_replicas = 3;
  policy.Reconfigure(config);
  EXPECT_EQ(policy.config().target_ongoing_requests, 1);
  d = policy.Decide(kStart + milliseconds(1000), 1);
  EXPECT_EQ(d.stable_replicas, 4u) << "4 requests at 1 per replica, from the samples before: " << d.reason_text;
  EXPECT_EQ(d.desired, 3u) << "the new max_replicas: " << d.reason_text;
  EXPECT_EQ(d.reason, ScaleReason::kMaxReplicas);
}

// Without any load observed the count stays, within the bounds.
// A steady load at the boundary between two counts (serving_load_test's ten replicas' worth at 2
// a replica: about 22 requests against 12 replicas, its 2 s stable window and no scale-down
// delay) keeps the count (kScaleDownTolerance); the stable window's own count flips between 11
// and 12 on this trace, so without the tolerance the count would flap. A real drop still scales
// down (halving first, as max_scale_down_rate says).
TEST(AutoscalerPolicy, ALoadAtTheBoundaryBetweenTwoCountsDoesNotFlapAndARealDropStillScalesDown) {
  AutoscalingConfig config = Scalable(1, 20, 12);
  config.stable_window = milliseconds(2000);
  config.panic_window = milliseconds(1000);
  std::vector<Row> rows;
  // 22 +- 0.6 requests over a 3 s period: the 2 s window's average drifts across 22 (21.75-22.25).
  for (int64_t ms = 0; ms < 20000; ms += 100) {
    rows.push_back({ms, Load{22 + 0.6 * std::sin(2 * M_PI * static_cast<double>(ms) / 3000.0), 0, 0}});
  }
  for (int64_t ms = 20000; ms <= 30000; ms += 100) rows.push_back({ms, Load{10, 0, 0}});
  const auto ticks = Replay(config, rows, 12);
  std::vector<uint32_t> boundary;
  std::set<uint32_t> stable_asks;
  for (const auto& t : ticks) {
    if (t.ms >= 20000) break;
    boundary.push_back(t.decision.desired);
    if (t.ms > config.stable_window.count()) stable_asks.insert(t.decision.stable_replicas);
  }
  EXPECT_EQ(DirectionChanges(boundary), 0);
  EXPECT_EQ(*std::min_element(boundary.begin(), boundary.end()), 12u);
  EXPECT_EQ(stable_asks, (std::set<uint32_t>{11, 12})) << "the trace no longer sits at the boundary";
  const Tick* held = First(ticks, 3000, [](const Tick& t) { return t.decision.reason == ScaleReason::kScaleDownTolerance; });
  ASSERT_NE(held, nullptr);
  EXPECT_NE(held->decision.reason_text.find("scale_down_tolerance"), std::string::npos) << held->decision.reason_text;
  EXPECT_EQ(ticks.back().decision.desired, 5u) << ticks.back().decision.reason_text;
}

TEST(AutoscalerPolicy, NoDataKeepsTheCurrentCount) {
  AutoscalerPolicy policy(Scalable(2, 5, 2));
  Decision d = policy.Decide(kStart, 7);
  EXPECT_EQ(d.desired, 5u);
  EXPECT_EQ(d.reason, ScaleReason::kNoData);
}

// The completed-requests target, when set, wins where it asks for more replicas.
TEST(AutoscalerPolicy, RequestsPerSecondTargetAsksForMoreWhenHigher) {
  AutoscalingConfig config = Scalable(1, 50, 1);
  config.target_requests_per_second = 5;
  Decision d = DecideOnce(config, Load{2, 0, 40}, 1);
  EXPECT_EQ(d.stable_replicas, 8u) << d.reason_text;
  EXPECT_EQ(d.desired, 8u);
}

// Rule 0 (Knative's initial scale): a policy fed a deployment's load, running count and ready
// count every `step`, with the load idle unless `load_at` says otherwise.
class StartTimeline {
 public:
  // Scalable(min, max, initial) with 1 s windows (the panic window `panic_ms`) and `grace_ms`.
  static AutoscalingConfig Config(uint32_t min, uint32_t max, uint32_t initial, int64_t panic_ms, int64_t grace_ms) {
    AutoscalingConfig config = Scalable(min, max, initial);
    config.stable_window = milliseconds(1000);
    config.panic_window = milliseconds(panic_ms);
    config.scale_to_zero_grace = milliseconds(grace_ms);
    return config;
  }

  explicit StartTimeline(const AutoscalingConfig& config) : policy_(config) {}
  // Decides at `ms` with `current` running and `ready` of them ready, after observing `load`.
  Decision At(int64_t ms, uint32_t current, uint32_t ready, Load load = Load{}) {
    policy_.Observe(kStart + milliseconds(ms), load);
    return policy_.Decide(kStart + milliseconds(ms), current, ready);
  }

 private:
  AutoscalerPolicy policy_;
};

// The trace: a min_replicas 0 deployment with a 500 ms grace whose one initial replica is
// still starting at +717 ms was scaled 1 -> 0 then (the grace counted from the deploy). It is held
// until it is ready, and the grace counts from that moment.
TEST(AutoscalerPolicy, TheInitialReplicaStaysUntilReadyAndTheGraceCountsFromThen) {
  StartTimeline t(StartTimeline::Config(0, 2, 1, 1000, 500));
  for (int64_t ms = 0; ms < 3000; ms += 100) {  // starting for 3 s: six graces
    Decision d = t.At(ms, 1, 0);
    ASSERT_EQ(d.desired, 1u) << "at " << ms << " ms, the replica not ready yet: " << d.reason_text;
    if (ms >= 500) {
      ASSERT_EQ(d.reason, ScaleReason::kInitialScale) << "at " << ms << " ms: " << d.reason_text;
      ASSERT_NE(d.reason_text.find("holding the start count 1 until as many are ready (0 ready"), std::string::npos)
          << d.reason_text;
    }
  }
  for (int64_t ms = 3000; ms < 3500; ms += 100) {
    Decision d = t.At(ms, 1, 1);
    ASSERT_EQ(d.desired, 1u) << "at " << ms << " ms, within the grace from ready (3000 ms): " << d.reason_text;
    EXPECT_EQ(d.reason, ScaleReason::kScaleToZeroGrace) << d.reason_text;
  }
  Decision d = t.At(3500, 1, 1);
  EXPECT_EQ(d.desired, 0u) << "the grace from ready has passed: " << d.reason_text;
  EXPECT_EQ(d.reason, ScaleReason::kScaleToZero);
}

// Not only the grace: a new deployment of 4 with no load keeps its 4 while they start (without
// the hold, the start-in-panic ends after the 1 s stable window and the count halves), and once
// the 4 were ready together the start count no longer holds: the next decision halves it (Knative:
// initial scale is ignored once reached).
TEST(AutoscalerPolicy, ANewDeploymentDoesNotScaleBelowItsInitialCountUntilThatManyWereReady) {
  StartTimeline t(StartTimeline::Config(1, 10, 4, 500, 30000));
  for (int64_t ms = 0; ms < 3000; ms += 100) {
    Decision d = t.At(ms, 4, ms < 2000 ? 0 : 3);  // 3 of 4 ready is not enough
    ASSERT_EQ(d.desired, 4u) << "at " << ms << " ms: " << d.reason_text;
  }
  Decision d = t.At(3000, 4, 4);
  EXPECT_EQ(d.desired, 2u) << "4 ready once: the stable window decides, at most halving: " << d.reason_text;
  EXPECT_EQ(d.reason, ScaleReason::kScaleDownLimit);
  d = t.At(3100, 2, 1);
  EXPECT_EQ(d.desired, 1u) << "reached once is enough: fewer ready later holds nothing: " << d.reason_text;
}

// A deployment brought up from zero by a request holds the new replica until it is ready, even
// if the request went away meanwhile (the client cancelled), and the grace counts from ready.
TEST(AutoscalerPolicy, AReplicaStartedForARequestStaysUntilReadyEvenIfTheRequestWentAway) {
  StartTimeline t(StartTimeline::Config(0, 2, 1, 1000, 1000));
  ASSERT_EQ(t.At(0, 1, 1).desired, 1u);
  Decision d = t.At(1000, 1, 1);
  ASSERT_EQ(d.desired, 0u) << d.reason_text;
  d = t.At(2000, 0, 0, Load{0, 1, 0});  // a request waits at the router
  ASSERT_EQ(d.desired, 1u) << d.reason_text;
  ASSERT_EQ(d.reason, ScaleReason::kScaleFromZero);
  for (int64_t ms = 2100; ms < 6000; ms += 100) {  // its client left at once; the replica starts for 4 s
    d = t.At(ms, 1, 0);
    ASSERT_EQ(d.desired, 1u) << "at " << ms << " ms: " << d.reason_text;
  }
  ASSERT_EQ(d.reason, ScaleReason::kInitialScale) << d.reason_text;
  d = t.At(6000, 1, 1);
  EXPECT_EQ(d.desired, 1u) << "ready at 6000 ms: the grace starts now: " << d.reason_text;
  d = t.At(6900, 1, 1);
  EXPECT_EQ(d.desired, 1u) << d.reason_text;
  d = t.At(7000, 1, 1);
  EXPECT_EQ(d.desired, 0u) << d.reason_text;
}

// The hold is bounded: a replica that never becomes ready (each start fails; the deployment
// removes it, count 0, and starts another) is held for kInitialScaleDeadline from the start, not
// from each new attempt, and then a min_replicas 0 deployment that saw no load goes to zero.
TEST(AutoscalerPolicy, AStartCountNeverReadyIsHeldOnlyUntilTheDeadline) {
  StartTimeline t(Scalable(0, 2, 1));
  const int64_t deadline_ms = std::chrono::duration_cast<milliseconds>(kInitialScaleDeadline).count();
  for (int64_t ms = 0; ms < deadline_ms; ms += 1000) {
    const bool replacing = (ms / 1000) % 60 == 30;  // every minute a failed start is removed, then replaced
    Decision d = t.At(ms, replacing ? 0 : 1, 0);
    ASSERT_EQ(d.desired, 1u) << "at " << ms << " ms: " << d.reason_text;
  }
  Decision d = t.At(deadline_ms, 1, 0);
  EXPECT_EQ(d.desired, 0u) << "the deadline passed: " << d.reason_text;
  EXPECT_EQ(d.reason, ScaleReason::kScaleToZero) << d.reason_text;
  EXPECT_EQ(d.reason_text.find("holding"), std::string::npos) << d.reason_text;
}

TEST(AutoscalerPolicy, ValidateNamesTheFieldAndRange) {
  EXPECT_TRUE(ValidateAutoscalingConfig(Scalable(0, 3, 1)).ok());
  auto bad = Scalable(4, 3, 3);
  EXPECT_NE(ValidateAutoscalingConfig(bad).message().find("replicas.min"), std::string::npos);
  bad = Scalable(1, 3, 5);
  EXPECT_NE(ValidateAutoscalingConfig(bad).message().find("replicas.initial"), std::string::npos);
  bad = Scalable(1, 3, 1);
  bad.panic_window = milliseconds(120000);
  auto status = ValidateAutoscalingConfig(bad);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("autoscaling.panic_window"), std::string::npos) << status.ToString();
  bad = Scalable(1, 3, 1);
  bad.panic_threshold = 1;
  EXPECT_NE(ValidateAutoscalingConfig(bad).message().find("autoscaling.panic_threshold"), std::string::npos);
  bad = Scalable(1, 3, 1);
  bad.target_ongoing_requests = 0;
  EXPECT_NE(ValidateAutoscalingConfig(bad).message().find("target_ongoing_requests"), std::string::npos);
}

}  // namespace
}  // namespace troupe::serving
