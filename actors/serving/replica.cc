// The serving replica actor, with the test model or a Backend (the process backend).
#include "actors/serving/replica.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <map>
#include <memory>
#include <vector>

#include "runtime/error.h"

namespace troupe::serving {

namespace {

using namespace std::chrono;

using token_atom = caf::atom_constant<caf::atom("rep_token")>;
using deadline_atom = caf::atom_constant<caf::atom("rep_dline")>;
using report_atom = caf::atom_constant<caf::atom("rep_report")>;
using drain_over_atom = caf::atom_constant<caf::atom("rep_drain")>;
// A Backend's events (BackendEvents), sent from its threads.
using backend_ready_atom = caf::atom_constant<caf::atom("rep_bready")>;
using backend_chunk_atom = caf::atom_constant<caf::atom("rep_bchunk")>;
using backend_done_atom = caf::atom_constant<caf::atom("rep_bdone")>;
using backend_error_atom = caf::atom_constant<caf::atom("rep_berror")>;
using backend_failed_atom = caf::atom_constant<caf::atom("rep_bfail")>;
// ReplicaConfig::startup_delay has passed: the start probe begins.
using startup_atom = caf::atom_constant<caf::atom("rep_start")>;

// The default probe timeout when HealthProbe gives none.
constexpr milliseconds kDefaultProbeTimeout{1000};

enum class FlightKind { kRequest, kProbe, kStartProbe };

// One request in flight (a health probe too: it takes the same path through the backend).
struct Flight {
  FlightKind kind = FlightKind::kRequest;
  uint64_t request_id = 0;
  caf::actor_addr sender;
  caf::response_promise promise;
  TestRequest request;
  std::vector<std::string> tokens;
  uint32_t emitted = 0;
  Clock::TimePoint started;
  int64_t first_token_us = 0;
  ResponseMeta meta;
  // Set: the events go there as ResponseChunks; empty: the whole output comes in the reply.
  caf::actor stream_to;
  uint64_t next_chunk = 0;
  std::string events;  // a stream's events when there is no stream_to
  bool stalled = false;
  // With a Backend: the request as sent (then cleared), and its end.
  std::string path;
  std::string body;
  BackendResponse result;
};

struct ReplicaActorState {
  ReplicaConfig config;
  const Clock* clock = nullptr;
  // Set: requests go to it (the process backend); null: the test model.
  std::unique_ptr<Backend> backend;
  uint64_t start_probe = 0;  // the flight that ends when the backend is ready
  ReplicaState replica_state = ReplicaState::kStarting;
  // By a sequence number of the replica's own: request ids are unique per sender only.
  std::map<uint64_t, Flight> flights;
  uint64_t next_seq = 1;
  uint32_t ongoing = 0;  // flights of kind kRequest
  uint64_t started_requests = 0;  // for stall_after_requests (probes included)
  uint64_t admitted_requests = 0;  // for fail_every_requests and crash_after_requests
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t completed_at_report = 0;
  Clock::TimePoint last_report;
  std::vector<caf::response_promise> drain_promises;
  uint32_t drain_finished = 0;
  uint32_t drain_abandoned = 0;
};

using Self = caf::stateful_actor<ReplicaActorState>;

int64_t Micros(Clock::Duration d) { return duration_cast<microseconds>(d).count(); }

void SetState(Self* self, ReplicaState to, const std::string& reason) {
  auto& st = self->state;
  if (st.replica_state == to) return;
  spdlog::info("replica '{}': {} -> {}{}{}", st.config.name, ReplicaStateName(st.replica_state), ReplicaStateName(to),
               reason.empty() ? "" : ": ", reason);
  st.replica_state = to;
  if (st.config.owner.valid()) self->send(st.config.owner.handle(), ReplicaStateChanged{st.config.name, to, reason});
}

void Stop(Self* self, const std::string& reason, const Status& in_flight, const caf::error& exit_reason = {});
void Stop(Self* self, const std::string& reason);

// Ends flight `seq` with `status`, as its reply (a start probe's failure stops the replica).
void Fail(Self* self, uint64_t seq, const Status& status) {
  auto& st = self->state;
  auto it = st.flights.find(seq);
  if (it == st.flights.end()) return;
  Flight flight = std::move(it->second);
  st.flights.erase(it);
  if (st.backend) st.backend->Cancel(seq);
  if (flight.promise.pending()) flight.promise.deliver(runtime::ToCafError(status));
  if (flight.kind == FlightKind::kRequest) {
    --st.ongoing;
    ++st.failed;
    if (st.replica_state == ReplicaState::kDraining) ++st.drain_finished;
    if (st.replica_state == ReplicaState::kStopped) ++st.drain_abandoned;
  }
  if (flight.kind == FlightKind::kStartProbe && st.replica_state == ReplicaState::kStarting) {
    Stop(self, "its first health probe failed: " + status.ToString());
    return;
  }
  if (st.replica_state == ReplicaState::kDraining && st.ongoing == 0) Stop(self, "drained");
}

// Ends flight `seq` with its response.
void Complete(Self* self, uint64_t seq) {
  auto& st = self->state;
  auto it = st.flights.find(seq);
  if (it == st.flights.end()) return;
  Flight flight = std::move(it->second);
  st.flights.erase(it);
  const int64_t took_us = Micros(st.clock->Now() - flight.started);
  switch (flight.kind) {
    case FlightKind::kStartProbe:
      if (st.replica_state == ReplicaState::kStarting) SetState(self, ReplicaState::kReady, "");
      return;
    case FlightKind::kProbe:
      flight.promise.deliver(HealthProbeReply{st.config.name, st.replica_state, took_us, st.ongoing});
      return;
    case FlightKind::kRequest:
      break;
  }
  InferenceResponse response;
  response.request_id = flight.request_id;
  response.http_status = 200;
  if (st.backend) {
    response.http_status = flight.result.http_status;
    response.body = std::move(flight.result.body);
    response.prompt_tokens = flight.result.prompt_tokens;
    response.completion_tokens = flight.result.completion_tokens;
  } else {
    if (!flight.request.stream) {
      response.body = CompletionBody(flight.request, flight.meta, flight.tokens);
    } else if (!flight.stream_to) {
      response.body = std::move(flight.events);
    }
    response.prompt_tokens = flight.request.prompt_tokens;
    response.completion_tokens = flight.emitted;
  }
  response.first_token_us = flight.first_token_us;
  response.replica = st.config.name;
  flight.promise.deliver(std::move(response));
  --st.ongoing;
  ++st.completed;
  if (st.replica_state == ReplicaState::kDraining) {
    ++st.drain_finished;
    if (st.ongoing == 0) Stop(self, "drained");
  }
}

// Emits the tokens of flight `seq` that are due, and schedules the next: the backend's loop.
void Advance(Self* self, uint64_t seq) {
  auto& st = self->state;
  auto it = st.flights.find(seq);
  if (it == st.flights.end() || it->second.stalled) return;
  Flight& f = it->second;
  const auto total = static_cast<uint32_t>(f.tokens.size());
  const auto elapsed = duration_cast<microseconds>(st.clock->Now() - f.started);
  const uint32_t due = TokensDue(st.config.model, elapsed, total);
  if (due > f.emitted) {
    if (f.emitted == 0) f.first_token_us = elapsed.count();
    std::string events;
    if (f.request.stream) {
      for (uint32_t k = f.emitted; k < due; ++k) events += StreamTokenEvent(f.request, f.meta, k, f.tokens[k]);
      if (due == total) events += StreamEndEvents(f.request, f.meta, total);
    }
    f.emitted = due;
    if (f.request.stream && f.stream_to) {
      self->send(f.stream_to, ResponseChunk{f.request_id, f.next_chunk++, std::move(events)});
    } else {
      f.events += events;
    }
  }
  if (f.emitted == total) {
    Complete(self, seq);
    return;
  }
  const auto wait = TokenOffset(st.config.model, f.emitted) - elapsed;
  self->delayed_send(self, std::max(wait, microseconds(0)), token_atom::value, seq);
}

// Starts a flight through the backend; its reply goes through `flight.promise` (when set).
uint64_t StartFlight(Self* self, Flight flight) {
  auto& st = self->state;
  const uint64_t seq = st.next_seq++;
  flight.started = st.clock->Now();
  if (st.backend) {
    // The start probe's flight ends with the backend's ready event.
    if (flight.kind == FlightKind::kRequest) {
      ++st.ongoing;
      st.backend->Send(seq, flight.path, flight.body, flight.request.stream);
      flight.body.clear();
    } else if (flight.kind == FlightKind::kProbe) {
      st.backend->Probe(seq);
    }
    st.flights.emplace(seq, std::move(flight));
    return seq;
  }
  flight.tokens = CompletionTokens(flight.request, st.config.model.seed);
  flight.meta = ResponseMeta{ResponseId(flight.request.kind, seq), st.clock->UnixMs() / 1000};
  ++st.started_requests;
  flight.stalled = st.config.stall_after_requests != 0 && st.started_requests > st.config.stall_after_requests;
  if (flight.kind == FlightKind::kRequest) ++st.ongoing;
  st.flights.emplace(seq, std::move(flight));
  Advance(self, seq);
  return seq;
}

// Why `req` cannot start now (OK: it can), and the milliseconds left to its deadline (0: none).
Status Admit(const ReplicaActorState& st, const InferenceRequest& req, int64_t* left_ms) {
  const std::string& name = st.config.name;
  switch (st.replica_state) {
    case ReplicaState::kStarting:
      return FailedPreconditionError("replica '" + name + "' is starting; the request did not start");
    case ReplicaState::kDraining:
    case ReplicaState::kStopped:
      return FailedPreconditionError("replica '" + name + "' is draining; the request did not start");
    case ReplicaState::kReady:
      break;
  }
  if (st.ongoing >= st.config.max_ongoing_requests) {
    return FailedPreconditionError("replica full; not started: replica '" + name + "' holds " +
                                   std::to_string(st.ongoing) + " requests (max_ongoing_requests " +
                                   std::to_string(st.config.max_ongoing_requests) + ")");
  }
  if (req.stream && !req.stream_to.valid()) {
    return InvalidArgumentError("request " + std::to_string(req.id) + " is streamed but has no stream_to");
  }
  *left_ms = 0;
  if (req.deadline_unix_ms != 0) {
    *left_ms = req.deadline_unix_ms - st.clock->UnixMs();
    if (*left_ms <= 0) {
      return DeadlineExceededError("request " + std::to_string(req.id) + " reached replica '" + name + "' " +
                                   std::to_string(-*left_ms) + " ms after its deadline; it did not start");
    }
  }
  return OkStatus();
}

caf::result<InferenceResponse> Serve(Self* self, InferenceRequest& req) {
  auto& st = self->state;
  int64_t left_ms = 0;
  Status admitted = Admit(st, req, &left_ms);
  if (!admitted.ok()) {
    ++st.failed;
    return runtime::ToCafError(admitted);
  }
  // (A StatusOr is never made from an OK Status: it asserts in debug builds.)
  StatusOr<TestRequest> parsed = TestRequest{};
  if (st.backend) {
    parsed->stream = req.stream;  // the backend takes the body as it is
  } else {
    parsed = ParseTestRequest(req.path, req.body, st.config.model);
  }
  if (!parsed.ok()) {
    ++st.failed;
    return runtime::ToCafError(parsed.status());
  }
  if (!st.backend) {
    // The test backend's failure knobs (tests of crashes and errors).
    const uint64_t n = ++st.admitted_requests;
    if (st.config.crash_after_requests != 0 && n == st.config.crash_after_requests) {
      const std::string reason = "crash_after " + std::to_string(n) + ": request " + std::to_string(n) +
                                 " arrived (the test backend's crash knob)";
      const Status crashed = UnavailableError("replica '" + st.config.name + "' crashed (" + reason + ")");
      ++st.failed;
      Stop(self, reason, crashed, runtime::ToCafError(InternalError("replica '" + st.config.name + "': " + reason)));
      return runtime::ToCafError(crashed);
    }
    if (st.config.fail_every_requests != 0 && n % st.config.fail_every_requests == 0) {
      ++st.failed;
      return runtime::ToCafError(InternalError("replica '" + st.config.name + "': request " + std::to_string(n) +
                                               " failed: the test backend fails every " +
                                               std::to_string(st.config.fail_every_requests) + "th (fail_every)"));
    }
  }
  Flight flight;
  flight.kind = FlightKind::kRequest;
  flight.request_id = req.id;
  flight.sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
  flight.promise = self->make_response_promise();
  flight.request = std::move(*parsed);
  flight.stream_to = req.stream_to.handle();
  if (st.backend) {
    flight.path = req.path;
    flight.body = std::move(req.body);
  }
  const uint64_t seq = StartFlight(self, std::move(flight));
  if (left_ms > 0 && st.flights.count(seq) != 0) {
    self->delayed_send(self, milliseconds(left_ms), deadline_atom::value, seq);
  }
  return caf::delegated<InferenceResponse>();
}

// Starts a health probe through the backend: a one-token request.
uint64_t Probe(Self* self, FlightKind kind, caf::response_promise promise) {
  auto& st = self->state;
  Flight flight;
  flight.kind = kind;
  flight.promise = std::move(promise);
  auto parsed = ParseTestRequest(kCompletionPath, ProbeBody(), st.config.model);
  flight.request = std::move(*parsed);  // the probe's body is ours: it always parses
  return StartFlight(self, std::move(flight));
}

// Stops the replica: what is still in flight (probes; requests at a drain's timeout or when killed)
// fails with `in_flight` (and counts as abandoned), Drains are answered, the actor exits.
void Stop(Self* self, const std::string& reason, const Status& in_flight, const caf::error& exit_reason) {
  auto& st = self->state;
  if (st.replica_state == ReplicaState::kStopped) return;
  std::vector<uint64_t> left;
  for (const auto& [seq, flight] : st.flights) left.push_back(seq);
  SetState(self, ReplicaState::kStopped, reason);
  for (uint64_t seq : left) Fail(self, seq, in_flight);
  for (auto& promise : st.drain_promises) promise.deliver(DrainReply{st.drain_finished, st.drain_abandoned});
  st.drain_promises.clear();
  st.backend.reset();  // a process backend's whole process group is killed
  self->quit(exit_reason);
}

Status StoppedWhileServing(const Self* self, const std::string& reason) {
  return UnavailableError("replica '" + self->state.config.name + "' stopped (" + reason + ") while serving it");
}

void Stop(Self* self, const std::string& reason) { Stop(self, reason, StoppedWhileServing(self, reason)); }

void ReportLoad(Self* self) {
  auto& st = self->state;
  const auto now = st.clock->Now();
  const double seconds = duration<double>(now - st.last_report).count();
  LoadReport report;
  report.deployment = st.config.deployment;
  report.source = st.config.name;
  report.at_unix_ms = st.clock->UnixMs();
  report.ongoing = st.ongoing;
  report.completed_per_second = seconds > 0 ? static_cast<double>(st.completed - st.completed_at_report) / seconds : 0;
  st.completed_at_report = st.completed;
  st.last_report = now;
  self->send(st.config.autoscaler.handle(), std::move(report));
}

caf::result<DrainReply> StartDrain(Self* self, const Drain& drain) {
  auto& st = self->state;
  st.drain_promises.push_back(self->make_response_promise());
  switch (st.replica_state) {
    case ReplicaState::kStarting:
      Stop(self, "drained while starting");
      break;
    case ReplicaState::kReady: {
      SetState(self, ReplicaState::kDraining, "drain requested");
      const milliseconds timeout = drain.timeout_ms > 0 ? milliseconds(drain.timeout_ms) : st.config.drain_timeout;
      self->delayed_send(self, timeout, drain_over_atom::value, timeout.count());
      if (st.ongoing == 0) Stop(self, "drained");
      break;
    }
    case ReplicaState::kDraining:  // a second Drain hears with the first
    case ReplicaState::kStopped:
      break;
  }
  return caf::delegated<DrainReply>();
}

// The drain timeout passed: what is still in flight fails, and the replica stops.
void DrainOver(Self* self, int64_t timeout_ms) {
  auto& st = self->state;
  if (st.replica_state != ReplicaState::kDraining) return;
  const std::string timeout = "the drain timeout (" + std::to_string(timeout_ms) + " ms)";
  Stop(self, timeout + " passed with " + std::to_string(st.ongoing) + (st.ongoing == 1 ? " request" : " requests") +
                 " in flight",
       UnavailableError("replica '" + st.config.name + "' was drained and the request was still running after " +
                        timeout));
}

void Cancel(Self* self, const CancelRequest& cancel) {
  auto& st = self->state;
  const auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
  std::vector<uint64_t> matched;
  for (const auto& [seq, flight] : st.flights) {
    if (flight.kind == FlightKind::kRequest && flight.request_id == cancel.request_id &&
        (!sender || flight.sender == sender)) {
      matched.push_back(seq);
    }
  }
  for (uint64_t seq : matched) {
    Fail(self, seq, CancelledError("request " + std::to_string(cancel.request_id) + " was cancelled at replica '" +
                                   st.config.name + "' (the client went away)"));
  }
}

// Starts the process backend, its events sent to this actor as messages.
void StartBackend(Self* self) {
  auto& st = self->state;
  const caf::actor_addr me = self->address();
  auto send = [me](auto&&... xs) {
    if (auto actor = caf::actor_cast<caf::actor>(me)) caf::anon_send(actor, std::forward<decltype(xs)>(xs)...);
  };
  BackendEvents events;
  events.ready = [send](const Status& s) {
    send(backend_ready_atom::value, static_cast<int32_t>(s.code()), s.message());
  };
  events.chunk = [send](uint64_t seq, std::string data) { send(backend_chunk_atom::value, seq, std::move(data)); };
  events.done = [send](uint64_t seq, StatusOr<BackendResponse> r) {
    if (!r.ok()) {
      send(backend_error_atom::value, seq, static_cast<int32_t>(r.status().code()), r.status().message());
      return;
    }
    send(backend_done_atom::value, seq, r->http_status, std::move(r->body), r->prompt_tokens, r->completion_tokens);
  };
  events.failed = [send](const Status& s) { send(backend_failed_atom::value, s.message()); };
  st.backend = std::make_unique<ProcessServerBackend>(st.config.name, *st.config.process, std::move(events));
  st.backend->Start();
}

// A streamed request's events from the backend.
void BackendChunk(Self* self, uint64_t seq, std::string& data) {
  auto& st = self->state;
  auto it = st.flights.find(seq);
  if (it == st.flights.end()) return;
  Flight& f = it->second;
  if (f.first_token_us == 0) f.first_token_us = Micros(st.clock->Now() - f.started);
  if (f.stream_to) {
    self->send(f.stream_to, ResponseChunk{f.request_id, f.next_chunk++, std::move(data)});
  } else {
    f.events += data;
  }
}

// The first health probe: the replica is ready when it passes.
void StartProbe(Self* self) {
  auto& st = self->state;
  const uint64_t start_probe = Probe(self, FlightKind::kStartProbe, caf::response_promise());
  st.start_probe = start_probe;
  // The process backend's ready_timeout bounds its start instead.
  if (!st.backend && st.flights.count(start_probe) != 0) {
    self->delayed_send(self, st.config.start_timeout, deadline_atom::value, start_probe);
  }
}

caf::behavior Replica(Self* self, ReplicaConfig config) {
  auto& st = self->state;
  st.config = std::move(config);
  st.clock = st.config.clock != nullptr ? st.config.clock : &SteadyClock::Instance();
  st.last_report = st.clock->Now();
  self->set_exit_handler([self](caf::exit_msg& msg) {
    if (!msg.reason) return;  // a normal exit of a linked actor is not ours
    const std::string reason = "exit: " + runtime::ErrorText(msg.reason);
    Stop(self, reason, StoppedWhileServing(self, reason), msg.reason);
  });
  if (st.config.owner.valid()) {
    self->send(st.config.owner.handle(), ReplicaStateChanged{st.config.name, st.replica_state, "spawned"});
  }
  if (st.config.process) StartBackend(self);
  if (!st.backend && st.config.startup_delay.count() > 0) {
    self->delayed_send(self, st.config.startup_delay, startup_atom::value);
  } else {
    StartProbe(self);
  }
  if (st.config.autoscaler.valid()) self->delayed_send(self, st.config.load_report_interval, report_atom::value);
  return {
      [self](InferenceRequest& req) -> caf::result<InferenceResponse> { return Serve(self, req); },
      [self](CancelRequest& cancel) { Cancel(self, cancel); },
      [self](Drain& drain) -> caf::result<DrainReply> { return StartDrain(self, drain); },
      [self](HealthProbe& probe) -> caf::result<HealthProbeReply> {
        const milliseconds timeout = probe.timeout_ms > 0 ? milliseconds(probe.timeout_ms) : kDefaultProbeTimeout;
        const uint64_t seq = Probe(self, FlightKind::kProbe, self->make_response_promise());
        if (self->state.flights.count(seq) != 0) self->delayed_send(self, timeout, deadline_atom::value, seq);
        return caf::delegated<HealthProbeReply>();
      },
      [self](ReplicaQuery&) -> ReplicaStatus {
        auto& st = self->state;
        return ReplicaStatus{st.config.name, st.replica_state, st.ongoing, st.completed, st.failed};
      },
      [self](AdoptReplica& adopt) -> ReplicaStatus {
        // A restarted head's deployment actor (through the node agent): state changes and load
        // go to it from now on; the state now is the reply, so none falls between the two owners.
        auto& st = self->state;
        const bool reporting = st.config.autoscaler.valid();
        st.config.owner = adopt.owner;
        st.config.autoscaler = adopt.autoscaler;
        if (!reporting && st.config.autoscaler.valid()) {
          self->delayed_send(self, st.config.load_report_interval, report_atom::value);
        }
        spdlog::info("replica '{}': taken back by {} ({})", st.config.name, adopt.owner.ToString(),
                     ReplicaStateName(st.replica_state));
        return ReplicaStatus{st.config.name, st.replica_state, st.ongoing, st.completed, st.failed};
      },
      [self](startup_atom) {
        if (self->state.replica_state == ReplicaState::kStarting) StartProbe(self);
      },
      [self](token_atom, uint64_t seq) { Advance(self, seq); },
      [self](deadline_atom, uint64_t seq) {
        auto& st = self->state;
        auto it = st.flights.find(seq);
        if (it == st.flights.end()) return;
        const Flight& f = it->second;
        const std::string& name = st.config.name;
        const int64_t ran_ms = Micros(st.clock->Now() - f.started) / 1000;
        switch (f.kind) {
          case FlightKind::kRequest:
            Fail(self, seq, DeadlineExceededError("request " + std::to_string(f.request_id) +
                                                  " passed its deadline at replica '" + name + "' after " +
                                                  std::to_string(ran_ms) + " ms with " + std::to_string(f.emitted) +
                                                  " of " + std::to_string(f.tokens.size()) + " tokens; stopped"));
            return;
          case FlightKind::kProbe:
          case FlightKind::kStartProbe:
            Fail(self, seq,
                 DeadlineExceededError("health probe of replica '" + name + "': no answer from its backend in " +
                                       std::to_string(ran_ms) + " ms: the request path is stuck"));
            return;
        }
      },
      [self](report_atom) {
        auto& st = self->state;
        if (st.replica_state == ReplicaState::kStopped || !st.config.autoscaler.valid()) return;
        ReportLoad(self);
        self->delayed_send(self, st.config.load_report_interval, report_atom::value);
      },
      [self](drain_over_atom, int64_t timeout_ms) { DrainOver(self, timeout_ms); },
      [self](backend_ready_atom, int32_t code, std::string& message) {
        const Status status(static_cast<StatusCode>(code), message);
        if (status.ok()) {
          Complete(self, self->state.start_probe);
        } else {
          Fail(self, self->state.start_probe, status);
        }
      },
      [self](backend_chunk_atom, uint64_t seq, std::string& data) { BackendChunk(self, seq, data); },
      [self](backend_done_atom, uint64_t seq, uint32_t http_status, std::string& body, uint32_t prompt_tokens,
             uint32_t completion_tokens) {
        auto it = self->state.flights.find(seq);
        if (it == self->state.flights.end()) return;
        it->second.result = BackendResponse{http_status, std::move(body), prompt_tokens, completion_tokens};
        Complete(self, seq);
      },
      [self](backend_error_atom, uint64_t seq, int32_t code, std::string& message) {
        Fail(self, seq, Status(static_cast<StatusCode>(code), message));
      },
      [self](backend_failed_atom, std::string& message) {
        const std::string reason = "its backend failed: " + message;
        Stop(self, reason,
             UnavailableError("replica '" + self->state.config.name + "' stopped while serving it: " + message));
      },
  };
}

}  // namespace

caf::actor SpawnServingReplica(caf::actor_system& system, ReplicaConfig config) {
  return system.spawn(Replica, std::move(config));
}

}  // namespace troupe::serving
