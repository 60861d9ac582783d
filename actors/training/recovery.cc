// An actor-worker group's recovery, broken down.
#include "actors/training/recovery.h"

#include <fmt/format.h>

namespace troupe::training {

namespace {

size_t Index(RecoveryMark mark) { return static_cast<size_t>(mark); }

double Ms(Clock::Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

const char* RecoveryMarkName(RecoveryMark mark) {
  switch (mark) {
    case RecoveryMark::kDetected: return "detected";
    case RecoveryMark::kDecided: return "decided";
    case RecoveryMark::kPlaced: return "placed";
    case RecoveryMark::kResumed: return "resumed";
    case RecoveryMark::kSpawned: return "spawned";
    case RecoveryMark::kFormed: return "formed";
    case RecoveryMark::kFirstStep: return "first step";
  }
  return "?";
}

void RecoveryTimeline::Begin(RecoveryMark start, TimePoint at, uint32_t world_size) {
  begun_ = true;
  first_ = start;
  world_size_ = world_size;
  at_.fill(std::nullopt);
  for (auto& ranks : ranks_) ranks.assign(world_size, false);
  at_[Index(start)] = at;
}

void RecoveryTimeline::Mark(RecoveryMark mark, TimePoint at) {
  if (!begun_ || Index(mark) < Index(first_) || at_[Index(mark)]) return;
  at_[Index(mark)] = at;
}

void RecoveryTimeline::MarkRank(RecoveryMark mark, uint32_t rank, TimePoint at) {
  if (!begun_ || rank >= world_size_) return;
  std::vector<bool>& ranks = ranks_[Index(mark)];
  if (ranks[rank]) return;
  ranks[rank] = true;
  for (bool reached : ranks) {
    if (!reached) return;
  }
  Mark(mark, at);
}

std::optional<RecoveryTimeline::TimePoint> RecoveryTimeline::At(RecoveryMark mark) const {
  return at_[Index(mark)];
}

std::vector<std::pair<std::string, Clock::Duration>> RecoveryTimeline::Phases() const {
  std::vector<std::pair<std::string, Clock::Duration>> out;
  if (!begun_) return out;
  TimePoint last = *at_[Index(first_)];
  for (size_t i = Index(first_) + 1; i < kRecoveryMarks; ++i) {
    if (!at_[i]) continue;
    out.emplace_back(RecoveryMarkName(static_cast<RecoveryMark>(i)), *at_[i] - last);
    last = *at_[i];
  }
  return out;
}

std::optional<Clock::Duration> RecoveryTimeline::Total() const {
  if (!complete()) return std::nullopt;
  return *At(RecoveryMark::kFirstStep) - *at_[Index(first_)];
}

std::string RecoveryTimeline::Summary() const {
  const auto total = Total();
  std::string out = after_failure() ? "recovered in " : "started in ";
  out += total ? fmt::format("{:.1f} ms", Ms(*total)) : std::string("(not yet)");
  out += after_failure() ? " after the failure was detected:" : " after the placement was asked for:";
  bool first = true;
  for (const auto& [name, duration] : Phases()) {
    out += fmt::format("{} {} +{:.1f}", first ? "" : ",", name, Ms(duration));
    first = false;
  }
  return out + " (ms)";
}

void LostNodes::Lost(const std::string& node, uint64_t agent_id, Clock::TimePoint at) {
  auto [it, inserted] = lost_.emplace(node, Loss{agent_id, at});
  if (!inserted && it->second.agent_id != agent_id) it->second = Loss{agent_id, at};
  unconfirmed_.erase(node);
}

void LostNodes::Unconfirmed(const std::string& node, uint64_t agent_id, Clock::TimePoint at) {
  if (auto it = lost_.find(node); it != lost_.end() && it->second.agent_id == agent_id) return;  // lost already
  unconfirmed_[node] = Loss{agent_id, at};
}

void LostNodes::Confirmed(const std::string& node, uint64_t agent_id) {
  auto it = unconfirmed_.find(node);
  if (it != unconfirmed_.end() && it->second.agent_id == agent_id) unconfirmed_.erase(it);
}

std::optional<std::string> LostNodes::Refuses(const std::vector<std::pair<std::string, uint64_t>>& places,
                                              Clock::TimePoint now) const {
  auto held = [&](const std::map<std::string, Loss>& nodes, const std::string& node, uint64_t agent_id) {
    auto it = nodes.find(node);
    return it != nodes.end() && it->second.agent_id == agent_id && now - it->second.at < hold_;
  };
  for (const auto& [node, agent_id] : places) {
    if (held(lost_, node, agent_id) || held(unconfirmed_, node, agent_id)) return node;
  }
  return std::nullopt;
}

}  // namespace troupe::training
