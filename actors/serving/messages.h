// The serving protocol's C++ messages (type ids 1300-1399; their Cap'n Proto schema and codecs
// are serving.capnp and messages.cc). Who sends what (docs/serving.md, "The protocol"):
//
//   client (HTTP gateway, bench, test) --InferenceRequest--> router --InferenceRequest--> replica
//   replica --ResponseChunk--> request.stream_to (streamed requests only)
//   replica --InferenceResponse (the reply)--> router --InferenceResponse--> client
//   deployment actor --ReplicaSet--> routers (which replicas are ready, their version and weight)
//   routers, replicas --LoadReport--> autoscaler (at least every 100 ms)
//   autoscaler --ScaleDecision--> deployment actor
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "actors/serving/replica_state.h"
#include "actors/serving/serving.capnp.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"

namespace troupe::serving {

/// One inference request. The body is the OpenAI JSON body exactly as the client sent it, so a
/// process backend (vLLM and the like) gets it unchanged; the in-process test model reads
/// max_tokens (and the prompt's length) from it.
///
/// Errors a router or replica replies with (as Status codes, docs/serving.md "Errors"):
///   ResourceExhausted: the router's queue is full (HTTP 503 at the gateway);
///   DeadlineExceeded: the deadline passed while queued or running (HTTP 504);
///   FailedPrecondition: the replica refused it before starting it (draining, stopping, not
///     ready): the router retries it once on another replica;
///   Unavailable: the replica died while serving it (HTTP 502), or no replica exists;
///   InvalidArgument: the body is not what the backend takes (HTTP 400).
struct InferenceRequest {
  /// Unique among the requests of one sender (a router numbers what it forwards itself).
  uint64_t id = 0;
  std::string deployment;
  /// "/v1/chat/completions" or "/v1/completions".
  std::string path;
  std::string body;
  bool stream = false;
  /// Wall-clock deadline, Unix milliseconds (0: the router's default).
  int64_t deadline_unix_ms = 0;
  /// Streamed requests: where the replica sends ResponseChunks (empty: not streamed).
  runtime::ActorRef stream_to;
};

/// Part of a streamed response: `data` is the bytes to pass to the client as they are (for the
/// OpenAI API, whole server-sent events: "data: {...}\n\n"). Chunks of one request carry
/// `index` 0, 1, 2, ... (the receiver can tell a gap).
struct ResponseChunk {
  uint64_t request_id = 0;
  uint64_t index = 0;
  std::string data;
};

/// The reply to an InferenceRequest: the whole body (not streamed) or empty (streamed: the body
/// went as chunks, and this marks the end), with the usage counts.
struct InferenceResponse {
  uint64_t request_id = 0;
  uint32_t http_status = 200;
  std::string body;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  /// Time to first token inside the replica, microseconds (0: unknown).
  int64_t first_token_us = 0;
  /// The replica that served it ("deployment/version/replica-N").
  std::string replica;
};

/// One replica as routers see it.
struct ReplicaInfo {
  runtime::ActorRef replica;
  /// "deployment/version/replica-N".
  std::string name;
  std::string version;
  /// The version's traffic weight (weighted routing and traffic split), >= 0.
  double weight = 1.0;
  /// Requests the replica may hold at once; beyond it the router queues.
  uint32_t max_ongoing_requests = 1;
};

/// Deployment actor -> routers: the ready replicas (draining and starting ones are never listed:
/// a router stops sending to a replica the moment a ReplicaSet without it arrives).
/// `generation` grows with every change; a router ignores an older one.
struct ReplicaSet {
  std::string deployment;
  uint64_t generation = 0;
  std::vector<ReplicaInfo> replicas;
};

/// Router or replica -> autoscaler: its load now. The autoscaler sums the newest report of every
/// source.
struct LoadReport {
  std::string deployment;
  /// "router/<id>" or a replica's name.
  std::string source;
  int64_t at_unix_ms = 0;
  /// Requests being served (at a replica) or sent and not answered (at a router).
  uint32_t ongoing = 0;
  /// Requests waiting at a router for a replica with room.
  uint32_t queued = 0;
  /// Requests completed per second since the source's previous report.
  double completed_per_second = 0;
};

/// Autoscaler -> deployment actor: run `desired` replicas (the decision is also an event and a
/// metric).
struct ScaleDecision {
  std::string deployment;
  uint32_t desired = 0;
  uint32_t current = 0;
  bool panic = false;
  std::string reason;
};

enum ServingTypeId : uint32_t {
  kInferenceRequest = 1300, kResponseChunk, kInferenceResponse, kReplicaSet, kLoadReport, kScaleDecision,
  kReplicaCount,
};

// ---- Replica control (type ids 1340-1359): deployment actor, routers and gateway -> replica ----

/// Router or HTTP gateway -> replica: stop serving request `request_id` (the client went away).
/// It matches the request of that id from the same sender; an anonymous CancelRequest (no
/// sender, as ActorRef::Send sends) matches every request of that id. The replica stops
/// producing tokens and answers the request with Cancelled. No reply; an id the replica does not
/// hold (finished already, never arrived) is ignored.
struct CancelRequest {
  uint64_t request_id = 0;
};

/// Deployment actor -> replica: take no new request (they get FailedPrecondition "draining; the
/// request did not start"), finish those in flight, then stop. Requests still in flight after
/// `timeout_ms` (0: the replica's configured drain timeout) fail with Unavailable. Reply:
/// DrainReply, once the replica has stopped (the asker's timeout must exceed the drain timeout;
/// a monitor on the replica tells the same). A replica still starting stops at once.
struct Drain {
  int64_t timeout_ms = 0;
};
struct DrainReply {
  /// Requests that ended normally while draining, and those failed at the drain timeout.
  uint32_t finished = 0;
  uint32_t abandoned = 0;
};

/// Deployment actor -> replica: a health check through the real request path: the replica runs
/// a one-token request through its backend (outside max_ongoing_requests, and counted in no
/// load), so a stuck backend fails the probe, where a plain ping would pass (Ray Serve's health
/// check). Reply: HealthProbeReply, or DeadlineExceeded once `timeout_ms` passed (0: 1000 ms)
/// with the probe request stopped, or the backend's error.
struct HealthProbe {
  int64_t timeout_ms = 0;
};
struct HealthProbeReply {
  std::string replica;
  ReplicaState state = ReplicaState::kStarting;
  /// How long the probe request took, microseconds.
  int64_t latency_us = 0;
  uint32_t ongoing = 0;
};

/// Anyone -> replica: its state and counts now (reply ReplicaStatus). Answered by the actor
/// itself, not the backend: a liveness check only.
struct ReplicaQuery {};
struct ReplicaStatus {
  std::string name;
  ReplicaState state = ReplicaState::kStarting;
  uint32_t ongoing = 0;
  /// Requests answered with a response, and with an error (refusals included), since it started.
  uint64_t completed = 0;
  uint64_t failed = 0;
};

/// Replica -> its owner (the deployment actor), at every state change; `reason` says why (empty
/// for starting -> ready).
struct ReplicaStateChanged {
  std::string name;
  ReplicaState state = ReplicaState::kStarting;
  std::string reason;
};

enum ReplicaControlTypeId : uint32_t {
  kCancelRequest = 1340, kDrain, kDrainReply, kHealthProbe, kHealthProbeReply, kReplicaQuery, kReplicaStatus,
  kReplicaStateChanged,
};

/// Registers the codecs of the serving protocol (every message in this file). A peer's bytes that do
/// not decode (or name an unknown replica state) give InvalidArgument, never a crash.
Status AddServingCodecs(runtime::CodecRegistry& registry);

/// Deployment actor -> its autoscaler, after every change of the count or of the ready count: the
/// replicas the deployment runs now, starting and ready ones (draining and stopped ones do not
/// count: they serve nothing new; AutoscalerReplicaCount), and how many of them are ready
/// (AutoscalerReadyCount). Scale decisions compare against `current`; `ready` ends the hold of the
/// count the deployment started at (AutoscalerPolicy, rule 0). A sender that leaves `ready` out
/// (an older peer) says 0: none ready, so the hold lasts until kInitialScaleDeadline. It normally
/// stays in the process (the autoscaler runs beside its deployment actor); its codec lets the two
/// run apart all the same, and puts it in the codec fuzz target with the rest of the protocol.
struct ReplicaCount {
  std::string deployment;
  uint32_t current = 0;
  uint32_t ready = 0;
};

// ---- Deployments on the cluster (type ids 1360-1379): deployment actor -> node agents, clients
// -> the head (docs/serving.md, "Deployments") ----

/// Deployment actor -> the node agent of the node its scheduler lease placed the replica on:
/// spawn a replica actor there (SpawnServingReplica) for lease `lease_id`, with the test backend,
/// or with the process backend when `process_command` is not empty: the agent starts that server
/// with the slice's environment (actors/slice_environment.h, as training workers get it) and its
/// log at <node data_dir>/serving/<deployment>/<replica, '/' as '_'>.log.
/// Reply: ReplicaStarted. The agent monitors `owner`: when the owner ends (its deployment was
/// deleted, or its actor failed) the agent stops its replicas, so no replica outlives its
/// deployment; when the owner only cannot be reached (the head was lost: an Unavailable down
/// reason) the replicas keep running and serving, and the agent reports them (RunningReplica) in
/// its next JoinRequest, where a restarted head takes them back (AdoptReplica) or stops them.
inline constexpr uint32_t kNoReplicaGpu = 0xFFFFFFFF;
struct StartReplica {
  std::string deployment;
  std::string version;
  /// "deployment/version/replica-N", unique on the cluster.
  std::string name;
  uint64_t lease_id = 0;
  uint32_t max_ongoing_requests = 5;
  int64_t drain_timeout_ms = 20000;
  int64_t start_timeout_ms = 60000;
  /// The test backend (deployment_spec.h TestBackend): tokens per second after the first (0: all
  /// at once), the first token's latency in microseconds, completion tokens when the request names
  /// none, stall after this many requests (0: never), the words' seed.
  double tokens_per_second = 0;
  int64_t first_token_latency_us = 0;
  uint32_t max_tokens = 16;
  uint32_t stall_after = 0;
  uint64_t seed = 0;
  /// The test backend's cold-start and failure knobs (ReplicaConfig's startup_delay, in
  /// milliseconds, fail_every_requests, crash_after_requests; 0: off).
  int64_t startup_delay_ms = 0;
  uint32_t fail_every = 0;
  uint32_t crash_after = 0;
  /// The process backend (deployment_spec.h ProcessBackend; empty command: the test backend):
  /// argv, "NAME=value" entries, working directory, the port's variable, the health path and
  /// the ready timeout in milliseconds.
  std::vector<std::string> process_command;
  std::vector<std::string> process_env;
  std::string process_working_dir;
  std::string process_port_env = "PORT";
  std::string process_health_path = "/health";
  int64_t process_ready_timeout_ms = 10 * 60 * 1000;
  /// The replica's slice from its lease (as training's StartWorker): the GPU's index on the node
  /// (kNoReplicaGpu: a CPU-only replica), its UUID, the slice's memory in bytes, its compute
  /// share in percent, whether the GPU is simulated.
  uint32_t gpu_index = kNoReplicaGpu;
  std::string gpu_id;
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 0;
  bool simulated = false;
  /// Hears the replica's ReplicaStateChanged (the deployment actor).
  runtime::ActorRef owner;
  /// Where the replica's LoadReports go (empty: none).
  runtime::ActorRef autoscaler;
};
struct ReplicaStarted {
  std::string name;
  runtime::ActorRef replica;
};
/// Deployment actor -> node agent: end the replica `name` now (an exit, no drain: a drained
/// replica has ended by itself). No reply; an unknown name is ignored.
struct StopReplica {
  std::string name;
};
/// A replica as its node agent reports it in a JoinRequest (after a head restart the new
/// deployment actor takes it back with AdoptReplica, or stops it).
struct RunningReplica {
  std::string name;        ///< "deployment/version/replica-N"
  std::string deployment;
  uint64_t lease_id = 0;   ///< the lease it was started on (StartReplica::lease_id)
  runtime::ActorRef replica;
};
/// Deployment actor -> node agent, after a head restart (or after the agent lost the head for a
/// while): replica `name` belongs to `owner` from now on. The agent watches `owner` instead of the
/// earlier one, and passes the message on to the replica, which sends its ReplicaStateChanged to
/// `owner` and its LoadReports to `autoscaler` (empty: none) from then on. Reply: the replica's
/// ReplicaStatus (its state now: later changes go to `owner`), or NotFound when the node runs no
/// replica of that name (it exited meanwhile).
struct AdoptReplica {
  std::string name;
  runtime::ActorRef owner;
  runtime::ActorRef autoscaler;
};
/// RunningReplica lists in other protocols' messages (the cluster's JoinRequest).
void FillRunningReplicas(const std::vector<RunningReplica>& in, capnp::List<wire::RunningReplica>::Builder out,
                         runtime::RefCodec& refs);
std::vector<RunningReplica> ReadRunningReplicas(capnp::List<wire::RunningReplica>::Reader in,
                                                runtime::RefCodec& refs);

/// Client -> head: a deployment operation (`op`: deploy, list, show, events, scale, delete; `body`:
/// the spec's JSON for deploy, the count for scale). Reply: DeploymentCommandReply with JSON.
struct DeploymentCommand {
  std::string op;
  std::string name;
  std::string body;
  /// Who asks, for the head's audit log ("cli@<client node name>"); empty from older senders
  /// (the head then names the sender's node, or "cluster-token"). Initialized here so that code
  /// written before it ({op, name, body}) builds without a missing-initializer warning.
  std::string caller = {};
};
struct DeploymentCommandReply {
  std::string body;
};

enum DeploymentTypeId : uint32_t {
  kStartReplica = 1360, kReplicaStarted, kStopReplica, kDeploymentCommand, kDeploymentCommandReply, kAdoptReplica,
};

}  // namespace troupe::serving

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::InferenceRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ResponseChunk)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::InferenceResponse)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaSet)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::LoadReport)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ScaleDecision)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::CancelRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::Drain)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::DrainReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::HealthProbe)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::HealthProbeReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaQuery)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaStatus)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaStateChanged)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaCount)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::StartReplica)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::ReplicaStarted)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::StopReplica)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::AdoptReplica)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::DeploymentCommand)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::serving::DeploymentCommandReply)
