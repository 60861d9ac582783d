// PendingRequests: requests to remote actors awaiting a reply, and their deadlines.
#include "runtime/pending_requests.h"

#include <algorithm>

namespace troupe::runtime {

PendingRequests::PendingRequests(const Clock& clock, std::chrono::milliseconds request_ttl, size_t max_pending)
    : clock_(clock), request_ttl_(request_ttl), max_pending_(max_pending) {}

uint64_t PendingRequests::AddActorRequest(NodeId node, caf::strong_actor_ptr src, caf::message_id mid) {
  if (pending_.size() >= max_pending_) return 0;
  const uint64_t id = ++next_id_;
  const auto now = clock_.Now();
  const auto deadline = now + request_ttl_;
  if (spare_.empty()) {
    pending_.emplace(id, PendingRequest{node, std::move(src), mid, deadline, {}, now});
  } else {
    auto slot = std::move(spare_.back());
    spare_.pop_back();
    slot.key() = id;
    slot.mapped() = PendingRequest{node, std::move(src), mid, deadline, {}, now};
    pending_.insert(std::move(slot));
  }
  actor_deadlines_.emplace_back(deadline, id);
  return id;
}

uint64_t PendingRequests::AddControlRequest(NodeId node, Clock::Duration timeout, PendingRequest::RefCallback done) {
  const uint64_t id = ++next_id_;
  const auto now = clock_.Now();
  const auto deadline = now + timeout;
  pending_.emplace(id, PendingRequest{node, nullptr, {}, deadline, std::move(done), now});
  control_deadlines_.emplace(deadline, id);
  return id;
}

bool PendingRequests::TakeReply(uint64_t id, NodeId from, PendingRequest* out) {
  auto it = pending_.find(id);
  if (it == pending_.end() || it->second.node != from) return false;
  *out = std::move(it->second);
  auto slot = pending_.extract(it);
  if (spare_.size() < kSpare) {
    slot.mapped() = PendingRequest{};
    spare_.push_back(std::move(slot));
  }
  return true;
}

bool PendingRequests::Take(uint64_t id, PendingRequest* out) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return false;
  *out = std::move(it->second);
  pending_.erase(it);
  return true;
}

void PendingRequests::TakeNode(NodeId node, std::vector<PendingRequest>* out) {
  for (auto p = pending_.begin(); p != pending_.end();) {
    if (p->second.node == node) {
      out->push_back(std::move(p->second));
      p = pending_.erase(p);
    } else {
      ++p;
    }
  }
}

std::vector<PendingRequest> PendingRequests::TakeAll() {
  Table all;
  all.swap(pending_);
  actor_deadlines_.clear();
  control_deadlines_ = {};
  std::vector<PendingRequest> out;
  out.reserve(all.size());
  for (auto& [id, p] : all) out.push_back(std::move(p));
  return out;
}

void PendingRequests::Expire(std::vector<PendingRequest>* timed_out) {
  const auto now = clock_.Now();
  auto expire = [&](uint64_t id) {
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.deadline <= now) {
      if (it->second.done) timed_out->push_back(std::move(it->second));
      pending_.erase(it);
    }
  };
  while (!actor_deadlines_.empty() && actor_deadlines_.front().first <= now) {
    expire(actor_deadlines_.front().second);
    actor_deadlines_.pop_front();
  }
  while (!control_deadlines_.empty() && control_deadlines_.top().first <= now) {
    expire(control_deadlines_.top().second);
    control_deadlines_.pop();
  }
  // Answered requests leave their deadline behind; drop those when they dominate (in place,
  // keeping the order).
  if (actor_deadlines_.size() > 2 * pending_.size() + 1024) {
    auto live = std::remove_if(actor_deadlines_.begin(), actor_deadlines_.end(),
                               [&](const Deadline& d) { return pending_.count(d.second) == 0; });
    actor_deadlines_.erase(live, actor_deadlines_.end());
  }
  if (control_deadlines_.size() > 2 * pending_.size() + 1024) {
    std::vector<Deadline> live;
    for (auto& [id, p] : pending_) {
      if (p.done) live.emplace_back(p.deadline, id);
    }
    control_deadlines_ = decltype(control_deadlines_)(std::greater<Deadline>(), std::move(live));
  }
}

}  // namespace troupe::runtime
