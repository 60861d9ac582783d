// MembershipRegistry.
#include "cluster/membership.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

namespace troupe::cluster {

std::string StateNow(const NodeRecord& record, std::optional<Clock::Duration> silence,
                     std::chrono::milliseconds failure_timeout) {
  if (record.state == "alive" && silence && *silence > failure_timeout / 2) return "suspect";
  return record.state;
}

MembershipRegistry::MembershipRegistry(const ClusterConfig& config, HeadStore* store,
                                       storage::Table<std::string, NodeRecord> table, const Clock* clock)
    : config_(config), store_(store), table_(std::move(table)), clock_(clock) {
  store_->AddRetry([this] { RetryUnsaved(); });
}

Status MembershipRegistry::Recover() {
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  RETURN_IF_ERROR(table_.ForEach(txn, [&](const std::string& name, const NodeRecord& stored) {
    NodeRecord record = stored;
    if (record.state != "dead") record.state = "unknown";
    nodes_[name] = record;
    return true;
  }));
  if (!nodes_.empty()) spdlog::info("head: recovered {} node(s) from {}", nodes_.size(), config_.head.data_dir);
  return OkStatus();
}

bool MembershipRegistry::AwaitingRejoins() const {
  return std::any_of(nodes_.begin(), nodes_.end(), [](const auto& n) { return n.second.state == "unknown"; });
}

StatusOr<NodeRecord> MembershipRegistry::Join(NodeRecord record) {
  if (record.name.empty()) return InvalidArgumentError("join: empty node name");
  auto known = nodes_.find(record.name);
  record.joins = known == nodes_.end() ? 1 : known->second.joins + 1;
  record.state = "alive";
  record.reason.clear();
  record.last_change_unix_ms = clock_->UnixMs();
  if (!config_.FindNode(record.name)) {
    spdlog::warn("head: node '{}' is not in {}; accepting it anyway", record.name, config_.source);
  }
  nodes_[record.name] = record;
  return record;
}

void MembershipRegistry::AttachAgent(const std::string& name, const runtime::ActorRef& agent) { agents_[name] = agent; }

std::optional<std::string> MembershipRegistry::NodeOfAgent(const caf::actor_addr& agent) const {
  for (const auto& [name, ref] : agents_) {
    if (ref.handle() && ref.handle().address() == agent) return name;
  }
  return std::nullopt;
}

NodeRecord MembershipRegistry::MarkDead(const std::string& name, const std::string& reason) {
  auto& record = nodes_[name];
  record.state = "dead";
  record.reason = reason;
  record.last_change_unix_ms = clock_->UnixMs();
  spdlog::warn("head: node '{}' is dead: {}", name, record.reason);
  Store(record);
  agents_.erase(name);
  return record;
}

std::vector<NodeRecord> MembershipRegistry::DeclareUnknownDead(const std::string& reason) {
  std::vector<NodeRecord> dead;
  for (auto& [name, record] : nodes_) {
    if (record.state != "unknown") continue;
    record.state = "dead";
    record.reason = reason;
    record.last_change_unix_ms = clock_->UnixMs();
    spdlog::warn("head: node '{}' is dead: {}", name, record.reason);
    Store(record);
    Notify(record);
    dead.push_back(record);
  }
  return dead;
}

void MembershipRegistry::Store(const NodeRecord& record) {
  Status s = store_->Write([&](storage::Txn& txn) { return table_.Put(txn, record.name, record); });
  if (s.ok()) {
    unsaved_.erase(record.name);
    return;
  }
  if (unsaved_.insert(record.name).second) {
    spdlog::error("head: cannot store node '{}' in {}: {}; it is stored at a later write (until then a restarted "
                  "head learns it again when the node rejoins)",
                  record.name, config_.head.data_dir, s.ToString());
  }
}

void MembershipRegistry::RetryUnsaved() {
  for (auto it = unsaved_.begin(); it != unsaved_.end();) {
    auto record = nodes_.find(*it);
    if (record == nodes_.end() ||
        store_->Commit([&](storage::Txn& txn) { return table_.Put(txn, *it, record->second); }).ok()) {
      if (record != nodes_.end()) spdlog::info("head: node '{}' stored now (an earlier write had failed)", *it);
      it = unsaved_.erase(it);
    } else {
      ++it;
    }
  }
}

NodeList MembershipRegistry::Subscribe(const runtime::ActorRef& subscriber) {
  subscribers_.push_back(subscriber);
  NodeList list;
  list.cluster_name = config_.name;
  for (const auto& [name, record] : nodes_) list.nodes.push_back(record);
  return list;
}

void MembershipRegistry::Unsubscribe(const caf::actor_addr& subscriber) {
  subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                    [&](const runtime::ActorRef& r) {
                                      return r.handle() && r.handle().address() == subscriber;
                                    }),
                     subscribers_.end());
}

void MembershipRegistry::Notify(const NodeRecord& record) const {
  for (const auto& s : subscribers_) s.Send(MembershipEvent{record});
}

NodeList MembershipRegistry::List(
    const std::function<std::optional<Clock::Duration>(uint64_t node_id)>& silence_of) const {
  NodeList list;
  list.cluster_name = config_.name;
  for (auto [name, record] : nodes_) {
    auto silence = silence_of(record.node_id);
    record.heartbeat_age_ms = silence ? std::chrono::duration_cast<std::chrono::milliseconds>(*silence).count() : -1;
    record.state = StateNow(record, silence, config_.failure_timeout);
    list.nodes.push_back(std::move(record));
  }
  return list;
}

const NodeRecord* MembershipRegistry::FindNode(const std::string& name) const {
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : &it->second;
}

const runtime::ActorRef* MembershipRegistry::AgentOf(const std::string& name) const {
  auto it = agents_.find(name);
  return it == agents_.end() ? nullptr : &it->second;
}

}  // namespace troupe::cluster
