// The autoscaler actor and its metrics.
#include "actors/serving/autoscaler.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace troupe::serving {

namespace {

using tick_atom = caf::atom_constant<caf::atom("as_tick")>;

struct Source {
  LoadReport report;
  Clock::TimePoint received;
};

struct AutoscalerState {
  AutoscalerInit init;
  std::unique_ptr<AutoscalerPolicy> policy;
  std::map<std::string, Source> sources;
  uint32_t current = 0;
  // How many of them are ready (ReplicaCount::ready): none until the deployment actor says so.
  uint32_t ready = 0;
  // The last decision sent (desired, current, panic); nullopt: none yet.
  std::optional<std::tuple<uint32_t, uint32_t, bool>> sent;
  bool panic = false;
};

using Self = caf::stateful_actor<AutoscalerState>;

bool IsRouter(const std::string& source) { return source.rfind("router/", 0) == 0; }

void Tick(Self* self) {
  auto& st = self->state;
  const auto now = st.init.clock->Now();
  std::map<std::string, LoadReport> live;
  for (auto it = st.sources.begin(); it != st.sources.end();) {
    if (now - it->second.received > st.init.source_timeout) {
      spdlog::info("autoscaler '{}': source '{}' sent no load for over {} ms; its load no longer counts",
                   st.init.deployment, it->first, st.init.source_timeout.count());
      it = st.sources.erase(it);
      continue;
    }
    live.emplace(it->first, it->second.report);
    ++it;
  }
  if (!live.empty()) st.policy->Observe(now, CombineLoad(live));
  Decision d = st.policy->Decide(now, st.current, st.ready);
  const bool changed = d.desired != st.current || d.panic != st.panic;
  const auto key = std::make_tuple(d.desired, st.current, d.panic);
  const bool send = changed && st.sent != key;
  if (send) {
    st.sent = key;
    spdlog::info("autoscaler '{}': {}", st.init.deployment, d.reason_text);
    st.init.target.Send(ScaleDecision{st.init.deployment, d.desired, st.current, d.panic, d.reason_text});
  }
  st.panic = d.panic;
  if (st.init.metrics) st.init.metrics->Record(st.init.deployment, d, st.current, st.ready, live.size(), send);
}

caf::behavior Autoscaler(Self* self, AutoscalerInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  st.policy = std::make_unique<AutoscalerPolicy>(st.init.config);
  st.current = st.init.config.initial_replicas;
  self->monitor(st.init.target.handle());
  self->set_down_handler([self](caf::down_msg&) { self->quit(); });
  self->attach_functor([metrics = st.init.metrics, deployment = st.init.deployment] {
    if (metrics) metrics->Remove(deployment);
  });
  self->delayed_send(self, st.init.config.tick, tick_atom::value);
  return {
      [self](LoadReport& report) {
        auto& st = self->state;
        if (report.deployment != st.init.deployment) return;
        auto source = report.source;
        st.sources[source] = Source{std::move(report), st.init.clock->Now()};
      },
      [self](ReplicaCount& count) {
        auto& st = self->state;
        if (count.deployment != st.init.deployment) return;
        st.ready = count.ready;
        if (count.current == st.current) return;
        st.current = count.current;
        st.sent.reset();  // a decision sent for another count may be needed again
      },
      [self](ConfigureAutoscaler& update) {
        auto& st = self->state;
        if (Status valid = ValidateAutoscalingConfig(update.config); !valid.ok()) {
          spdlog::error("autoscaler '{}': the new configuration is refused, the old one stays: {}", st.init.deployment,
                        valid.ToString());
          return;
        }
        st.init.config = update.config;
        st.policy->Reconfigure(update.config);
        st.sent.reset();  // the same count may need a decision under the new targets
        spdlog::info("autoscaler '{}': reconfigured: target {} ongoing, {}/s per replica, {} to {} replicas",
                     st.init.deployment, update.config.target_ongoing_requests,
                     update.config.target_requests_per_second, update.config.min_replicas,
                     update.config.max_replicas);
      },
      [self](tick_atom) {
        Tick(self);
        self->delayed_send(self, self->state.init.config.tick, tick_atom::value);
      },
  };
}

}  // namespace

Load CombineLoad(const std::map<std::string, LoadReport>& reports) {
  Load routers, replicas;
  for (const auto& [source, report] : reports) {
    Load& kind = IsRouter(source) ? routers : replicas;
    kind.ongoing += report.ongoing;
    kind.queued += report.queued;
    kind.completed_per_second += report.completed_per_second;
  }
  return Load{std::max(routers.ongoing, replicas.ongoing), routers.queued,
              std::max(routers.completed_per_second, replicas.completed_per_second)};
}

StatusOr<caf::actor> SpawnAutoscaler(caf::actor_system& system, AutoscalerInit init) {
  Status valid = ValidateAutoscalingConfig(init.config);
  if (!valid.ok()) return InvalidArgumentError("autoscaler of '" + init.deployment + "': " + valid.message());
  if (!init.target) {
    return InvalidArgumentError("autoscaler of '" + init.deployment + "': no deployment actor to send decisions to");
  }
  if (!init.clock) init.clock = &SteadyClock::Instance();
  return system.spawn(Autoscaler, std::move(init));
}

void AutoscalerMetrics::Record(const std::string& deployment, const Decision& decision, uint32_t current,
                               uint32_t ready, size_t sources, bool sent) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[deployment];
  e.decision = decision;
  e.current = current;
  e.ready = ready;
  e.sources = sources;
  if (sent) ++e.sent_by_reason[ScaleReasonName(decision.reason)];
}

void AutoscalerMetrics::Remove(const std::string& deployment) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(deployment);
}

runtime::MetricsSource AutoscalerMetricsSource(std::shared_ptr<AutoscalerMetrics> metrics) {
  return [metrics = std::move(metrics)](std::vector<prometheus::MetricFamily>& out) { metrics->Collect(out); };
}

void AutoscalerMetrics::Collect(std::vector<prometheus::MetricFamily>& out) const {
  std::map<std::string, Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries = entries_;
  }
  auto desired = runtime::GaugeFamily("troupe_serving_autoscaler_desired_replicas",
                                      "Replicas the autoscaler decided at its last tick");
  auto current = runtime::GaugeFamily("troupe_serving_autoscaler_current_replicas",
                                      "Replicas the deployment runs (starting and ready), as it last told its autoscaler");
  auto ready = runtime::GaugeFamily("troupe_serving_autoscaler_ready_replicas",
                                    "Of those, the ready ones, as the deployment last told its autoscaler");
  auto panic = runtime::GaugeFamily("troupe_serving_autoscaler_panic", "1 while the autoscaler is in panic mode");
  auto load = runtime::GaugeFamily("troupe_serving_autoscaler_load_requests",
                                   "Average ongoing plus queued requests over the stable or panic window");
  auto sources = runtime::GaugeFamily("troupe_serving_autoscaler_load_sources",
                                      "Routers and replicas whose load reports count now");
  auto decisions = runtime::CounterFamily("troupe_serving_autoscaler_decisions_total",
                                          "Scale decisions sent to the deployment actor, by reason");
  for (const auto& [name, e] : entries) {
    runtime::AddSample(desired, e.decision.desired, {{"deployment", name}});
    runtime::AddSample(current, e.current, {{"deployment", name}});
    runtime::AddSample(ready, e.ready, {{"deployment", name}});
    runtime::AddSample(panic, e.decision.panic ? 1 : 0, {{"deployment", name}});
    runtime::AddSample(load, e.decision.stable_load, {{"deployment", name}, {"window", "stable"}});
    runtime::AddSample(load, e.decision.panic_load, {{"deployment", name}, {"window", "panic"}});
    runtime::AddSample(sources, static_cast<double>(e.sources), {{"deployment", name}});
    for (const auto& [reason, n] : e.sent_by_reason) {
      runtime::AddSample(decisions, static_cast<double>(n), {{"deployment", name}, {"reason", reason}});
    }
  }
  for (auto* family : {&desired, &current, &ready, &panic, &load, &sources, &decisions}) out.push_back(std::move(*family));
}

}  // namespace troupe::serving
