// Supervisor trees.
#include "runtime/supervisor.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <optional>

#include "common/backoff.h"
#include "runtime/error.h"
#include "runtime/runtime.h"

namespace troupe::runtime {

using restart_atom = caf::atom_constant<caf::atom("sv_restart")>;
using stop_timeout_atom = caf::atom_constant<caf::atom("sv_stopto")>;

std::string_view StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kOneForOne: return "one_for_one";
    case Strategy::kOneForAll: return "one_for_all";
    case Strategy::kRestForOne: return "rest_for_one";
  }
  return "?";
}

std::string_view RestartTypeName(RestartType r) {
  switch (r) {
    case RestartType::kPermanent: return "permanent";
    case RestartType::kTransient: return "transient";
    case RestartType::kTemporary: return "temporary";
  }
  return "?";
}

void SupervisionCounters::Count(const SupervisorEvent& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (e.kind == "restarting") ++restarts_[{e.supervisor, e.child}];
  if (e.kind == "escalated") ++escalations_[e.supervisor];
}

std::map<std::pair<std::string, std::string>, uint64_t> SupervisionCounters::restarts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return restarts_;
}

std::map<std::string, uint64_t> SupervisionCounters::escalations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return escalations_;
}

namespace {

// A child's lifecycle (docs/supervision.md):
//   stopped -> running (start ok) -> [exits] -> waiting (backoff) -> running ...
//   running -> stopping (orderly stop: exit sent) -> stopped (down received or killed)
//   start failure -> waiting (counts as a restart), or, at the supervisor's first start, escalation
enum class Phase { kStopped, kRunning, kStopping, kWaiting, kRemoved };

struct Child {
  ChildSpec spec;
  Phase phase = Phase::kStopped;
  ActorRef ref;
  caf::actor_addr addr;
  StartContext ctx;
  uint64_t stop_token = 0;
};

struct SupervisorState {
  SupervisorSpec spec;
  Runtime* runtime = nullptr;
  std::vector<Child> children;
  std::deque<std::chrono::steady_clock::time_point> recent;  // restarts within the window
  std::optional<Backoff> backoff;                           // from the spec's backoff_* fields
  // An orderly stop in progress: children left to stop (in order), then what to do.
  std::deque<size_t> stop_queue;
  std::function<void()> after_stop;
  bool stopping_all = false;  // shutting down or escalating: nothing restarts any more
  uint64_t generation = 0;    // invalidates restart timers of an earlier restart round
  uint64_t next_token = 0;
};

using Self = caf::stateful_actor<SupervisorState>;

void Emit(Self* self, const Child* child, std::string kind, const Status& reason, uint32_t restarts = 0) {
  auto& st = self->state;
  SupervisorEvent e;
  e.supervisor = st.spec.name;
  e.child = child ? child->spec.id : "";
  e.kind = std::move(kind);
  e.reason = reason.ok() ? "" : reason.ToString();
  e.node = child && child->ref.valid() ? child->ref.node() : 0;
  e.unix_ms = st.runtime->clock().UnixMs();
  e.restarts = restarts;
  auto level = e.kind == "escalated" || e.kind == "start_failed"  ? spdlog::level::err
               : e.kind == "exited" || e.kind == "restarting" ? spdlog::level::warn
                                                               : spdlog::level::info;
  spdlog::log(level, "supervisor {}: {}{}{}{}", e.supervisor, e.child.empty() ? "" : "child '" + e.child + "' ",
              e.kind, e.reason.empty() ? "" : ": " + e.reason,
              e.restarts ? " (restart " + std::to_string(e.restarts) + " within the window)" : "");
  st.runtime->supervision().Count(e);
  if (st.spec.on_event) st.spec.on_event(e);
  if (st.spec.event_sink.valid()) st.spec.event_sink.Send(e);
}

// Starts child i; false (and an event) if its start function failed.
bool StartChild(Self* self, size_t i) {
  auto& child = self->state.children[i];
  StatusOr<ActorRef> ref = InternalError("no start function");
  if (child.spec.start) ref = child.spec.start(child.ctx);
  if (ref.ok() && !ref->valid()) ref = InternalError("start function returned an empty ref");
  if (!ref.ok()) {
    child.phase = Phase::kStopped;
    child.ctx.last_exit = ref.status();
    Emit(self, &child, "start_failed", ref.status());
    return false;
  }
  child.ref = *ref;
  child.addr = ref->handle().address();
  child.phase = Phase::kRunning;
  child.ctx.last_node = ref->node();
  self->monitor(ref->handle());
  Emit(self, &child, "started", OkStatus());
  return true;
}

void StopNext(Self* self);

// Stops `which` (indices) one after the other in the given order, then runs `then`.
void StopChildren(Self* self, std::vector<size_t> which, std::function<void()> then) {
  auto& st = self->state;
  st.stop_queue.assign(which.begin(), which.end());
  st.after_stop = std::move(then);
  StopNext(self);
}

void StopNext(Self* self) {
  auto& st = self->state;
  while (!st.stop_queue.empty()) {
    size_t i = st.stop_queue.front();
    st.stop_queue.pop_front();
    auto& child = st.children[i];
    if (child.phase == Phase::kWaiting) child.phase = Phase::kStopped;
    if (child.phase != Phase::kRunning) continue;
    child.phase = Phase::kStopping;
    child.stop_token = ++st.next_token;
    self->send_exit(child.ref.handle(), caf::exit_reason::user_shutdown);
    self->delayed_send(self, child.spec.shutdown_timeout, stop_timeout_atom::value, uint64_t{i}, child.stop_token);
    return;  // the next one when this one is down (or killed)
  }
  if (st.after_stop) {
    auto then = std::move(st.after_stop);
    st.after_stop = nullptr;
    then();
  }
}

std::vector<size_t> Reverse(size_t from, size_t to) {  // to-1 down to from
  std::vector<size_t> out;
  for (size_t i = to; i > from; --i) out.push_back(i - 1);
  return out;
}

void Escalate(Self* self, const Status& why) {
  auto& st = self->state;
  st.stopping_all = true;
  Emit(self, nullptr, "escalated", why);
  StopChildren(self, Reverse(0, st.children.size()), [self, why] {
    Emit(self, nullptr, "stopped", why);
    self->quit(ToCafError(why));
  });
}

// Starts children [from, to) that are stopped, in order; a failure schedules its restart.
void StartRange(Self* self, size_t from, size_t to);

void ScheduleRestart(Self* self, size_t first, size_t last_plus_one, const Status& why, size_t failed) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
  st.recent.push_back(now);
  while (!st.recent.empty() && now - st.recent.front() > st.spec.within) st.recent.pop_front();
  const auto n = static_cast<uint32_t>(st.recent.size());
  if (static_cast<int>(n) > st.spec.max_restarts) {
    Escalate(self, UnavailableError("supervisor '" + st.spec.name + "': child '" + st.children[failed].spec.id +
                                    "' needed more than " + std::to_string(st.spec.max_restarts) + " restarts within " +
                                    std::to_string(st.spec.within.count()) + " ms (last: " + why.ToString() + ")"));
    return;
  }
  for (size_t i = first; i < last_plus_one; ++i) {
    if (st.children[i].phase == Phase::kStopped) st.children[i].phase = Phase::kWaiting;
  }
  Emit(self, &st.children[failed], "restarting", why, n);
  const auto delay = st.backoff->Delay(n);
  const uint64_t gen = ++st.generation;
  if (delay.count() <= 0) {
    self->send(self, restart_atom::value, gen, uint64_t{first}, uint64_t{last_plus_one});
  } else {
    self->delayed_send(self, delay, restart_atom::value, gen, uint64_t{first}, uint64_t{last_plus_one});
  }
}

void StartRange(Self* self, size_t from, size_t to) {
  auto& st = self->state;
  for (size_t i = from; i < to && !st.stopping_all; ++i) {
    auto& child = st.children[i];
    if (child.phase != Phase::kWaiting && child.phase != Phase::kStopped) continue;
    child.phase = Phase::kStopped;
    if (!StartChild(self, i)) {
      ++child.ctx.attempt;
      // The rest of the range waits with it (their order matters for one_for_all/rest_for_one).
      ScheduleRestart(self, i, to, child.ctx.last_exit, i);
      return;
    }
  }
}

void OnChildExit(Self* self, size_t i, const caf::error& reason) {
  auto& st = self->state;
  auto& child = st.children[i];
  const Status status = ToStatus(reason);
  if (child.phase == Phase::kStopping) {
    child.phase = Phase::kStopped;
    StopNext(self);
    return;
  }
  if (child.phase != Phase::kRunning) return;
  child.phase = Phase::kStopped;
  child.ctx.last_exit = status;
  child.ctx.node_lost = status.code() == StatusCode::kUnavailable;
  Emit(self, &child, "exited", status.ok() ? OkStatus() : status);
  const bool restart = child.spec.restart == RestartType::kPermanent ||
                       (child.spec.restart == RestartType::kTransient && !status.ok());
  if (!restart) {
    if (child.spec.restart == RestartType::kTemporary) child.phase = Phase::kRemoved;
    return;
  }
  if (st.stopping_all) return;
  ++child.ctx.attempt;
  if (!st.stop_queue.empty() || st.after_stop) {
    // An orderly stop for another restart round is under way; that round restarts this child
    // with the others (if it is in its range) once the stop is done.
    return;
  }
  const Status why = status.ok() ? UnavailableError("exited normally") : status;
  const size_t n = st.children.size();
  switch (st.spec.strategy) {
    case Strategy::kOneForOne:
      ScheduleRestart(self, i, i + 1, why, i);
      break;
    case Strategy::kOneForAll:
      StopChildren(self, Reverse(0, n), [self, i, n, why] {
        if (!self->state.stopping_all) ScheduleRestart(self, 0, n, why, i);
      });
      break;
    case Strategy::kRestForOne:
      StopChildren(self, Reverse(i + 1, n), [self, i, n, why] {
        if (!self->state.stopping_all) ScheduleRestart(self, i, n, why, i);
      });
      break;
  }
}

caf::behavior Supervisor(Self* self, SupervisorSpec spec, Runtime* runtime) {
  auto& st = self->state;
  st.runtime = runtime;
  st.spec = std::move(spec);
  st.backoff.emplace(
      BackoffPolicy{st.spec.backoff_initial, st.spec.backoff_multiplier, st.spec.backoff_max, st.spec.backoff_jitter});
  for (auto& c : st.spec.children) st.children.push_back(Child{c, Phase::kStopped, {}, {}, {}, 0});
  st.spec.children.clear();

  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    for (size_t i = 0; i < st.children.size(); ++i) {
      if (st.children[i].addr == msg.source &&
          (st.children[i].phase == Phase::kRunning || st.children[i].phase == Phase::kStopping)) {
        OnChildExit(self, i, msg.reason);
        return;
      }
    }
  });
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    if (st.stopping_all) {
      if (msg.reason == caf::exit_reason::kill) self->quit(msg.reason);
      return;
    }
    st.stopping_all = true;
    caf::error reason = msg.reason;
    StopChildren(self, Reverse(0, st.children.size()), [self, reason] {
      Emit(self, nullptr, "stopped", ToStatus(reason));
      self->quit(reason);
    });
  });

  // First start, in order. A child that cannot start at all fails the supervisor (as in OTP).
  for (size_t i = 0; i < st.children.size(); ++i) {
    if (!StartChild(self, i)) {
      Status why = st.children[i].ctx.last_exit;
      Escalate(self, FailedPreconditionError("supervisor '" + st.spec.name + "': child '" + st.children[i].spec.id +
                                             "' did not start: " + why.ToString()));
      break;
    }
  }

  MailboxDepths* depths = &runtime->mailbox_depths();
  const std::string sampled_as = "supervisor/" + st.spec.name;
  StartMailboxSampling(self, depths, sampled_as);
  return {
      MailboxSampleHandler(self, depths, sampled_as),
      [self](restart_atom, uint64_t gen, uint64_t from, uint64_t to) {
        auto& st = self->state;
        if (gen != st.generation || st.stopping_all) return;
        StartRange(self, from, std::min<size_t>(to, st.children.size()));
      },
      [self](stop_timeout_atom, uint64_t i, uint64_t token) {
        auto& st = self->state;
        if (i >= st.children.size()) return;
        auto& child = st.children[i];
        if (child.phase != Phase::kStopping || child.stop_token != token) return;
        spdlog::warn("supervisor {}: child '{}' did not stop within {} ms; killing it", st.spec.name, child.spec.id,
                     child.spec.shutdown_timeout.count());
        self->send_exit(child.ref.handle(), caf::exit_reason::kill);
        // A remote child may never answer (its node is hung): count it as stopped now.
        child.phase = Phase::kStopped;
        StopNext(self);
      },
  };
}

}  // namespace

ActorRef StartSupervisor(Runtime& runtime, SupervisorSpec spec) {
  return runtime.Ref(runtime.system().spawn<caf::detached>(Supervisor, std::move(spec), &runtime));
}

}  // namespace troupe::runtime
