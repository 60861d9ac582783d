// The autoscaling policy (Knative's KPA rules over explicit time).
#include "actors/serving/autoscaler_policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace troupe::serving {

namespace {

std::string Ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

double Seconds(Clock::Duration d) { return std::chrono::duration<double>(d).count(); }

// ceil(x) for a replica count, forgiving the last bits of a floating-point average (4.0000001 / 2
// asks for 2 replicas, not 3).
uint32_t CeilCount(double x) {
  double c = std::ceil(x - 1e-9);
  if (c <= 0) return 0;
  if (c >= 4e9) return 4000000000u;
  return static_cast<uint32_t>(c);
}

}  // namespace

Status ValidateAutoscalingConfig(const AutoscalingConfig& c) {
  auto bad = [](const std::string& field, const std::string& what) {
    return InvalidArgumentError("deployment spec: " + field + " " + what);
  };
  if (c.max_replicas < 1) return bad("replicas.max", "must be at least 1, is 0");
  if (c.min_replicas > c.max_replicas) {
    return bad("replicas.min", fmt::format("({}) must not exceed replicas.max ({})", c.min_replicas, c.max_replicas));
  }
  if (c.initial_replicas < c.min_replicas || c.initial_replicas > c.max_replicas) {
    return bad("replicas.initial", fmt::format("({}) must lie within replicas.min ({}) and replicas.max ({})",
                                               c.initial_replicas, c.min_replicas, c.max_replicas));
  }
  if (!(c.target_ongoing_requests > 0)) {
    return bad("autoscaling.target_ongoing_requests", fmt::format("must be above 0, is {}", c.target_ongoing_requests));
  }
  if (!(c.target_requests_per_second >= 0)) {
    return bad("autoscaling.target_requests_per_second",
               fmt::format("must be 0 (not used) or above, is {}", c.target_requests_per_second));
  }
  if (c.stable_window.count() <= 0) return bad("autoscaling.stable_window", "must be above 0, is " + Ms(c.stable_window));
  if (c.panic_window.count() <= 0 || c.panic_window > c.stable_window) {
    return bad("autoscaling.panic_window", "must be above 0 and at most the stable window (" + Ms(c.stable_window) +
                                               "), is " + Ms(c.panic_window));
  }
  if (c.tick.count() <= 0) return bad("autoscaling.tick", "must be above 0, is " + Ms(c.tick));
  if (!(c.panic_threshold > 1)) {
    return bad("autoscaling.panic_threshold", fmt::format("must be above 1 (Knative 2.0), is {}", c.panic_threshold));
  }
  if (!(c.max_scale_up_rate > 1)) {
    return bad("autoscaling.max_scale_up_rate", fmt::format("must be above 1 (Knative 1000), is {}", c.max_scale_up_rate));
  }
  if (!(c.max_scale_down_rate > 1)) {
    return bad("autoscaling.max_scale_down_rate",
               fmt::format("must be above 1 (Knative 2), is {}", c.max_scale_down_rate));
  }
  if (c.scale_down_delay.count() < 0) {
    return bad("autoscaling.scale_down_delay", "must be 0 or above, is " + Ms(c.scale_down_delay));
  }
  if (c.scale_to_zero_grace.count() < 0) {
    return bad("autoscaling.scale_to_zero_grace", "must be 0 or above, is " + Ms(c.scale_to_zero_grace));
  }
  return OkStatus();
}

const char* ScaleReasonName(ScaleReason reason) {
  switch (reason) {
    case ScaleReason::kNoData: return "no_data";
    case ScaleReason::kStable: return "stable";
    case ScaleReason::kPanic: return "panic";
    case ScaleReason::kScaleUpLimit: return "scale_up_limit";
    case ScaleReason::kScaleDownLimit: return "scale_down_limit";
    case ScaleReason::kScaleDownDelay: return "scale_down_delay";
    case ScaleReason::kScaleDownTolerance: return "scale_down_tolerance";
    case ScaleReason::kScaleToZeroGrace: return "scale_to_zero_grace";
    case ScaleReason::kScaleToZero: return "scale_to_zero";
    case ScaleReason::kScaleFromZero: return "scale_from_zero";
    case ScaleReason::kMinReplicas: return "min_replicas";
    case ScaleReason::kMaxReplicas: return "max_replicas";
    case ScaleReason::kInitialScale: return "initial_scale";
  }
  return "unknown";
}

AutoscalerPolicy::AutoscalerPolicy(const AutoscalingConfig& config) : config_(config) {}

void AutoscalerPolicy::Reconfigure(const AutoscalingConfig& config) {
  config_ = config;
  if (samples_.empty()) return;
  const auto horizon = samples_.back().at - std::max(config_.stable_window, config_.panic_window);
  while (!samples_.empty() && samples_.front().at <= horizon) samples_.pop_front();
}

void AutoscalerPolicy::Observe(TimePoint now, const Load& load) {
  if (!samples_.empty() && now < samples_.back().at) now = samples_.back().at;
  if (!first_sample_) first_sample_ = now;
  if (load.ongoing > 0 || load.queued > 0 || load.completed_per_second > 0) last_load_ = now;
  samples_.push_back({now, load});
  const auto horizon = now - std::max(config_.stable_window, config_.panic_window);
  while (!samples_.empty() && samples_.front().at <= horizon) samples_.pop_front();
}

AutoscalerPolicy::Averages AutoscalerPolicy::Average(TimePoint now, std::chrono::milliseconds window) const {
  Averages out;
  size_t n = 0;
  for (auto it = samples_.rbegin(); it != samples_.rend() && it->at > now - window; ++it) {
    if (it->at > now) continue;
    out.load += it->load.ongoing + it->load.queued;
    out.rps += it->load.completed_per_second;
    ++n;
  }
  if (n == 0) return out;
  out.load /= n;
  out.rps /= n;
  out.any = true;
  return out;
}

uint32_t AutoscalerPolicy::ReplicasFor(const Averages& averages) const {
  uint32_t n = CeilCount(averages.load / config_.target_ongoing_requests);
  if (config_.target_requests_per_second > 0) {
    n = std::max(n, CeilCount(averages.rps / config_.target_requests_per_second));
  }
  return n;
}

void AutoscalerPolicy::TrackStart(TimePoint now, uint32_t current_replicas, uint32_t ready_replicas) {
  const bool started = current_replicas > 0 && (!last_current_ || *last_current_ == 0);
  last_current_ = current_replicas;
  if (started && !holding_) holding_ = Start{now, current_replicas};
  if (!holding_) return;
  if (ready_replicas >= std::min(holding_->replicas, config_.max_replicas)) {
    ready_at_ = now;
    holding_.reset();
  } else if (now - holding_->at >= kInitialScaleDeadline) {
    holding_.reset();  // its replicas never all became ready: the other rules decide alone
  }
}

Decision AutoscalerPolicy::Decide(TimePoint now, uint32_t current_replicas, uint32_t ready_replicas) {
  TrackStart(now, current_replicas, ready_replicas);
  Decision d;
  const auto stable = Average(now, config_.stable_window);
  const auto panic = Average(now, config_.panic_window);
  if (!stable.any) {
    d.desired = std::clamp(current_replicas, config_.min_replicas, config_.max_replicas);
    d.reason = ScaleReason::kNoData;
    d.reason_text = fmt::format("{} -> {} replicas (no_data): no load observed within the stable window ({})",
                                current_replicas, d.desired, Ms(config_.stable_window));
    return d;
  }
  d.stable_load = stable.load;
  d.stable_rps = stable.rps;
  d.panic_load = panic.load;
  d.panic_rps = panic.rps;
  d.stable_replicas = ReplicasFor(stable);
  d.panic_replicas = ReplicasFor(panic);

  const double current = std::max<uint32_t>(1, current_replicas);
  const uint32_t up_limit = CeilCount(current * config_.max_scale_up_rate);
  const uint32_t down_limit = static_cast<uint32_t>(std::floor(current / config_.max_scale_down_rate));
  auto limited = [&](uint32_t ask, ScaleReason& why) {
    if (ask > up_limit) {
      why = ScaleReason::kScaleUpLimit;
      return up_limit;
    }
    if (ask < down_limit) {
      why = ScaleReason::kScaleDownLimit;
      return down_limit;
    }
    return ask;
  };

  // A policy without history that finds several replicas running keeps them for a stable window:
  // its first samples say little, and the capacity may be in use (Knative starts in panic too).
  if (!decided_ && current_replicas > 1) {
    panic_since_ = now;
    max_panic_replicas_ = current_replicas;
  }
  decided_ = true;
  if (d.panic_replicas / current >= config_.panic_threshold) {
    panic_since_ = now;  // starts panic, or renews it while the burst lasts
  } else if (panic_since_ && now - *panic_since_ >= config_.stable_window) {
    panic_since_.reset();  // the burst is in the stable average now
    max_panic_replicas_ = 0;
  }

  ScaleReason why = ScaleReason::kStable;
  uint32_t want = limited(d.stable_replicas, why);
  if (panic_since_) {
    d.panic = true;
    ScaleReason panic_why = ScaleReason::kPanic;
    uint32_t panic_want = limited(d.panic_replicas, panic_why);
    if (panic_want >= want) {  // a tie is panic's too: without panic a burst waits for the stable window
      want = panic_want;
      why = panic_why;
    }
    if (want >= max_panic_replicas_) {
      max_panic_replicas_ = want;
    } else {
      want = max_panic_replicas_;  // never down while panicking
      why = ScaleReason::kPanic;
    }
  }

  // Within the tolerance of the current count, the stable window's lower count waits: the load
  // sits at the boundary between two counts (kScaleDownTolerance).
  if (why == ScaleReason::kStable && want > 0 && want < current_replicas) {
    double asked = stable.load / config_.target_ongoing_requests;
    if (config_.target_requests_per_second > 0) asked = std::max(asked, stable.rps / config_.target_requests_per_second);
    if (asked >= current_replicas * (1.0 - kScaleDownTolerance)) {
      want = current_replicas;
      why = ScaleReason::kScaleDownTolerance;
    }
  }

  auto quiet_since = last_load_ ? *last_load_ : *first_sample_;
  if (ready_at_ && *ready_at_ > quiet_since) quiet_since = *ready_at_;
  if (config_.min_replicas == 0 && !d.panic) {
    if (now - quiet_since >= config_.scale_to_zero_grace) {
      want = down_limit;
      why = want == 0 ? ScaleReason::kScaleToZero : ScaleReason::kScaleDownLimit;
    } else if (want == 0 && current_replicas > 0) {
      want = 1;  // the last replica waits out the grace: a request may come back soon
      why = ScaleReason::kScaleToZeroGrace;
    }
  }

  if (config_.scale_down_delay.count() > 0) {
    recent_.emplace_back(now, want);
    while (recent_.front().first <= now - config_.scale_down_delay) recent_.pop_front();
    uint32_t highest = 0;
    for (const auto& [at, n] : recent_) highest = std::max(highest, n);
    if (highest > want) {
      want = highest;
      why = ScaleReason::kScaleDownDelay;
    }
  }

  // Rule 0 after the delay, so the delay window does not remember the held count past the hold.
  if (holding_ && want < holding_->replicas) {
    want = holding_->replicas;
    why = ScaleReason::kInitialScale;
  }

  const Load& newest = samples_.back().load;
  if (current_replicas == 0 && (newest.queued > 0 || newest.ongoing > 0)) {
    want = std::max<uint32_t>(want, 1);
    why = ScaleReason::kScaleFromZero;
  }

  if (want < config_.min_replicas) {
    want = config_.min_replicas;
    why = ScaleReason::kMinReplicas;
  } else if (want > config_.max_replicas) {
    want = config_.max_replicas;
    why = ScaleReason::kMaxReplicas;
  }
  d.desired = want;
  d.reason = why;
  d.reason_text = fmt::format(
      "{} -> {} replicas ({}{}): stable window {:.3g} requests, {:.3g}/s asks {}; panic window {:.3g} requests, "
      "{:.3g}/s asks {}; target {:.3g} per replica; quiet {:.1f} s",
      current_replicas, want, ScaleReasonName(why), d.panic ? ", panicking" : "", d.stable_load, d.stable_rps,
      d.stable_replicas, d.panic_load, d.panic_rps, d.panic_replicas, config_.target_ongoing_requests,
      Seconds(now - quiet_since));
  if (holding_) {
    d.reason_text += fmt::format("; holding the start count {} until as many are ready ({} ready, at most {:.0f} s more)",
                                 holding_->replicas, ready_replicas,
                                 Seconds(holding_->at + kInitialScaleDeadline - now));
  }
  return d;
}

}  // namespace troupe::serving
