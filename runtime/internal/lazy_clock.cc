// LazyClock and its coordinator.
#include "runtime/internal/lazy_clock.h"

#include <caf/actor_cast.hpp>
#include <caf/actor_system_config.hpp>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace troupe::runtime::internal {

namespace {

caf::strong_actor_ptr StrongOf(caf::abstract_actor* self) {
  return self != nullptr ? caf::strong_actor_ptr{self->ctrl()} : nullptr;
}

}  // namespace

LazyClock::~LazyClock() { Stop(); }

void LazyClock::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopped_) return;
  thread_ = std::thread([this] { Run(); });
}

void LazyClock::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  std::vector<Change> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(queue_);
  }
  // Dropped outside the lock: releasing an actor may call back into the clock.
  left.clear();
  timers_.cancel_all();
}

uint64_t LazyClock::wakeups() const {
  std::lock_guard<std::mutex> lock(mu_);
  return wakeups_;
}

uint64_t LazyClock::applied() const { return applied_.load(std::memory_order_relaxed); }

size_t LazyClock::scheduled() const { return scheduled_.load(std::memory_order_acquire); }

void LazyClock::Push(Change change, time_point due) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;  // `change` (and the actor it holds) is released after the lock
  queue_.push_back(std::move(change));
  queued_due_ = std::min(queued_due_, due);
  if (!sleeping_) return;  // the thread looks at the queue before it sleeps again
  if (due < wake_at_ || queue_.size() == kBatch) {
    wake_at_ = std::min(wake_at_, due);
    ++wakeups_;
    cv_.notify_one();
  }
}

void LazyClock::Run() {
  std::vector<Change> batch;
  time_point next_due = time_point::max();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Sleep until the next timer is due, a change needs an earlier wake-up, or enough changes
    // queued up. Changes that need no wake-up (cancellations, later timers) wait in the queue.
    wake_at_ = std::min(next_due, queued_due_);
    while (!stopped_ && queue_.size() < kBatch && now() < wake_at_) {
      sleeping_ = true;
      if (wake_at_ == time_point::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, wake_at_);
      }
      sleeping_ = false;
    }
    if (stopped_) return;
    batch.swap(queue_);
    queued_due_ = time_point::max();
    lock.unlock();
    CancelOut(batch);
    for (auto& change : batch) Apply(change);
    batch.clear();  // releases actors outside the lock: that may queue more changes
    // Published before anything fires: what a fired timer or message causes happens after it.
    scheduled_.store(timers_.schedule().size(), std::memory_order_release);
    timers_.trigger_expired_timeouts();
    next_due = timers_.schedule().empty() ? time_point::max() : timers_.schedule().begin()->first;
    lock.lock();
  }
}

void LazyClock::CancelOut(std::vector<Change>& batch) {
  // (actor, request id) -> the index in `batch` of its timer or cancellation, not yet paired.
  std::unordered_map<RequestKey, size_t, RequestKeyHash> open;
  open.reserve(batch.size() / 2 + 1);
  std::unordered_set<RequestKey, RequestKeyHash> orphans;
  orphans.swap(orphan_cancels_);
  for (size_t i = 0; i < batch.size(); ++i) {
    Change& c = batch[i];
    RequestKey key;
    if (c.kind == Change::kRequest && c.actor) {
      key = {c.actor->id(), c.mid.integer_value()};
      if (orphans.erase(key) > 0) {  // cancelled in the previous batch, before it was set
        c.kind = Change::kNone;
        continue;
      }
    } else if (c.kind == Change::kCancelRequest) {
      key = {c.aid, c.mid.integer_value()};
    } else {
      continue;
    }
    auto [it, inserted] = open.try_emplace(key, i);
    if (inserted) continue;
    Change& other = batch[it->second];
    if (other.kind != c.kind) {  // a timer and its cancellation, in either order
      other.kind = Change::kNone;
      c.kind = Change::kNone;
      open.erase(it);
    } else {
      it->second = i;
    }
  }
  // A cancellation that met no timer here still goes to the table (its timer may be there); it
  // is also remembered for one batch, for a timer set just after it.
  for (const auto& [key, index] : open) {
    if (batch[index].kind == Change::kCancelRequest) orphan_cancels_.insert(key);
  }
}

void LazyClock::Apply(Change& c) {
  if (c.kind == Change::kNone) return;
  applied_.fetch_add(1, std::memory_order_relaxed);
  // Null for cancellations (they carry the id only); actor_cast must not see a null pointer.
  auto* actor = c.actor ? caf::actor_cast<caf::abstract_actor*>(c.actor) : nullptr;
  switch (c.kind) {
    case Change::kOrdinary:
      timers_.set_ordinary_timeout(c.t, actor, c.type, c.id);
      break;
    case Change::kMulti:
      timers_.set_multi_timeout(c.t, actor, c.type, c.id);
      break;
    case Change::kRequest:
      timers_.set_request_timeout(c.t, actor, c.mid);
      break;
    case Change::kCancelOrdinary:
      timers_.handle(caf::detail::simple_actor_clock::ordinary_timeout_cancellation{c.aid, c.type});
      break;
    case Change::kCancelRequest:
      timers_.handle(caf::detail::simple_actor_clock::request_timeout_cancellation{c.aid, c.mid});
      break;
    case Change::kCancelAll:
      timers_.handle(caf::detail::simple_actor_clock::timeouts_cancellation{c.aid});
      break;
    case Change::kCancelEverything:
      timers_.cancel_all();
      break;
    case Change::kMessage:
      timers_.schedule_message(c.t, std::move(c.actor), std::move(c.content));
      break;
    case Change::kGroupMessage:
      timers_.schedule_message(c.t, std::move(c.group), std::move(c.actor), std::move(c.message));
      break;
    case Change::kNone:
      break;
  }
}

void LazyClock::SetTimeout(Change::Kind kind, time_point t, caf::abstract_actor* self, caf::atom_value type,
                           uint64_t id) {
  Change c(kind);
  c.t = t;
  c.actor = StrongOf(self);
  c.type = type;
  c.id = id;
  Push(std::move(c), t);
}

void LazyClock::set_ordinary_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type, uint64_t id) {
  SetTimeout(Change::kOrdinary, t, self, type, id);
}

void LazyClock::set_multi_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type, uint64_t id) {
  SetTimeout(Change::kMulti, t, self, type, id);
}

void LazyClock::set_request_timeout(time_point t, caf::abstract_actor* self, caf::message_id id) {
  Change c(Change::kRequest);
  c.t = t;
  c.actor = StrongOf(self);
  c.mid = id;
  Push(std::move(c), t);
}

void LazyClock::cancel_ordinary_timeout(caf::abstract_actor* self, caf::atom_value type) {
  Change c(Change::kCancelOrdinary);
  c.aid = self->id();
  c.type = type;
  Push(std::move(c), time_point::max());
}

void LazyClock::cancel_request_timeout(caf::abstract_actor* self, caf::message_id id) {
  const caf::actor_id aid = self->id();
  caf::strong_actor_ptr released;  // let go of outside the lock
  {
    // A reply usually comes while its request's timer still waits in the queue, often as the
    // last change queued: the two then cancel out here, and neither costs the clock's thread
    // anything. Only the newest few changes are looked at, so this stays cheap.
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    const size_t look = std::min<size_t>(queue_.size(), kCancelLookback);
    for (size_t k = 0; k < look; ++k) {
      Change& c = queue_[queue_.size() - 1 - k];
      if (c.kind == Change::kRequest && c.mid == id && c.actor && c.actor->id() == aid) {
        released = std::move(c.actor);
        if (k == 0) {
          queue_.pop_back();
        } else {
          c.kind = Change::kNone;
        }
        cancelled_at_push_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
    }
  }
  Change c(Change::kCancelRequest);
  c.aid = aid;
  c.mid = id;
  Push(std::move(c), time_point::max());
}

void LazyClock::cancel_timeouts(caf::abstract_actor* self) {
  Change c(Change::kCancelAll);
  c.aid = self->id();
  Push(std::move(c), time_point::max());
}

void LazyClock::schedule_message(time_point t, caf::strong_actor_ptr receiver, caf::mailbox_element_ptr content) {
  Change c(Change::kMessage);
  c.t = t;
  c.actor = std::move(receiver);
  c.content = std::move(content);
  Push(std::move(c), t);
}

void LazyClock::schedule_message(time_point t, caf::group target, caf::strong_actor_ptr sender,
                                 caf::message content) {
  Change c(Change::kGroupMessage);
  c.t = t;
  c.actor = std::move(sender);
  c.group = std::move(target);
  c.message = std::move(content);
  Push(std::move(c), t);
}

void LazyClock::cancel_all() { Push(Change(Change::kCancelEverything), time_point::max()); }

void LazyClockCoordinator::start() {
  lazy_clock_.Start();
  coordinator::start();
}

void LazyClockCoordinator::stop() {
  coordinator::stop();
  lazy_clock_.Stop();
}

void InstallLazyClock(caf::actor_system_config& config) {
  config.module_factories.push_back(
      [](caf::actor_system& system) -> caf::actor_system::module* { return new LazyClockCoordinator(system); });
}

}  // namespace troupe::runtime::internal
