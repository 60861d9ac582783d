// Supervisor trees: an actor that starts children from specs, watches them (local or on other
// nodes, through monitors), restarts them by strategy with restart intensity and backoff, and
// escalates to its own parent when restarts do not help. docs/supervision.md has the state
// diagram of a child's lifecycle.
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/actor_ref.h"

namespace troupe::runtime {

class Runtime;

enum class RestartType {
  kPermanent,  ///< always restarted
  kTransient,  ///< restarted only after an abnormal exit
  kTemporary,  ///< never restarted
};

enum class Strategy {
  kOneForOne,   ///< restart the child that failed
  kOneForAll,   ///< stop all children (reverse start order), restart all (start order)
  kRestForOne,  ///< stop and restart the failed child and every child started after it
};

/// What a start function knows about the start it makes.
struct StartContext {
  int attempt = 0;                     ///< 0 for the first start, then 1, 2, ...
  std::optional<NodeId> last_node;     ///< where the child ran last time
  bool node_lost = false;              ///< it stopped because its node was lost
  Status last_exit;                    ///< why it stopped last time
};

/// Starts (or restarts) a child and returns its ref: a local spawn, Runtime::SpawnOn another
/// node, or a nested supervisor (StartSupervisor). Runs on the supervisor's own thread and may
/// block (remote spawn). This is the placement function for remote children: when the child's
/// node is lost, `ctx.node_lost` says so and the function picks another node.
using StartFunction = std::function<StatusOr<ActorRef>(const StartContext& ctx)>;

struct ChildSpec {
  std::string id;
  StartFunction start;
  RestartType restart = RestartType::kPermanent;
  /// How long an orderly stop waits for the child to exit before killing it.
  std::chrono::milliseconds shutdown_timeout{5000};
};

/// One supervision event: logged, counted (troupe_supervisor_*), passed to `on_event`, and
/// sent to `event_sink` (the head keeps them for `troupe events`).
struct SupervisorEvent {
  std::string supervisor;
  std::string child;      ///< empty for events of the supervisor itself
  std::string kind;       ///< started, exited, restarting, start_failed, escalated, stopped
  std::string reason;     ///< the exit reason or error, when there is one
  uint64_t node = 0;      ///< the child's node
  int64_t unix_ms = 0;
  uint32_t restarts = 0;  ///< restarts within the intensity window, this one included
};

struct SupervisorSpec {
  std::string name;
  Strategy strategy = Strategy::kOneForOne;
  /// Restart intensity: more than `max_restarts` restarts within `within` and the supervisor
  /// stops its children and exits with an error, which its own parent sees as a failure.
  int max_restarts = 3;
  std::chrono::milliseconds within{5000};
  /// Delay before restart n (n = restarts in the window): initial * multiplier^(n-1), capped
  /// at backoff_max, then shortened by up to the fraction backoff_jitter at random
  /// (common/backoff.h). The default restarts at once.
  std::chrono::milliseconds backoff_initial{0};
  std::chrono::milliseconds backoff_max{5000};
  double backoff_multiplier = 2.0;
  double backoff_jitter = 0.0;
  std::vector<ChildSpec> children;  ///< started in this order, stopped in reverse
  /// Called on the supervisor's thread for every event (may be empty).
  std::function<void(const SupervisorEvent&)> on_event;
  /// Gets every event as a message (may be empty).
  ActorRef event_sink;
};

/// Counts of supervision events in one process, exported by RuntimeMetrics.
class SupervisionCounters {
 public:
  void Count(const SupervisorEvent& e);
  /// (supervisor, child) -> restarts; supervisor -> escalations.
  std::map<std::pair<std::string, std::string>, uint64_t> restarts() const;
  std::map<std::string, uint64_t> escalations() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> restarts_;
  std::map<std::string, uint64_t> escalations_;
};

/// Starts a supervisor (a detached actor: start functions may block) and its children.
/// The supervisor stops its children in reverse start order and exits when it is sent an exit
/// (ActorRef::handle() with caf::anon_send_exit, or its parent stopping it), or escalates.
/// A child that fails to start at first start makes the supervisor fail (exit with that error).
ActorRef StartSupervisor(Runtime& runtime, SupervisorSpec spec);

std::string_view StrategyName(Strategy s);
std::string_view RestartTypeName(RestartType r);

}  // namespace troupe::runtime

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::runtime::SupervisorEvent)
