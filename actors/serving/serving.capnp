# The serving protocol: clients, routers, replicas, the deployment actor and the autoscaler
# (type ids 1300-1399, actors/serving/messages.h, where each message's sender and reply are).
@0xc13c2e4c7834a559;

$import "/capnp/c++.capnp".namespace("troupe::serving::wire");
using Rt = import "/runtime/messages.capnp";

# A replica's state (actors/serving/replica_state.h). A peer may send a value this build does not
# know: the decoder refuses it with InvalidArgument.
enum ReplicaState { starting @0; ready @1; draining @2; stopped @3; }

struct InferenceRequest {
  id @0 :UInt64;
  deployment @1 :Text;
  path @2 :Text;                 # "/v1/chat/completions" or "/v1/completions"
  body @3 :Data;                 # the OpenAI JSON body as the client sent it (any bytes)
  stream @4 :Bool;
  deadlineUnixMs @5 :Int64;      # 0: the router's default
  streamTo @6 :Rt.ActorAddress;  # node 0: not streamed
}
struct ResponseChunk { requestId @0 :UInt64; index @1 :UInt64; data @2 :Data; }
struct InferenceResponse {
  requestId @0 :UInt64;
  httpStatus @1 :UInt32;
  body @2 :Data;
  promptTokens @3 :UInt32;
  completionTokens @4 :UInt32;
  firstTokenUs @5 :Int64;
  replica @6 :Text;
}
struct ReplicaInfo {
  replica @0 :Rt.ActorAddress;
  name @1 :Text;
  version @2 :Text;
  weight @3 :Float64;
  maxOngoingRequests @4 :UInt32;
}
struct ReplicaSet { deployment @0 :Text; generation @1 :UInt64; replicas @2 :List(ReplicaInfo); }
struct LoadReport {
  deployment @0 :Text;
  source @1 :Text;
  atUnixMs @2 :Int64;
  ongoing @3 :UInt32;
  queued @4 :UInt32;
  completedPerSecond @5 :Float64;
}
struct ScaleDecision { deployment @0 :Text; desired @1 :UInt32; current @2 :UInt32; panic @3 :Bool; reason @4 :Text; }
struct ReplicaCount { deployment @0 :Text; current @1 :UInt32; ready @2 :UInt32; }

# Replica control (1340-1359).
struct CancelRequest { requestId @0 :UInt64; }
struct Drain { timeoutMs @0 :Int64; }
struct DrainReply { finished @0 :UInt32; abandoned @1 :UInt32; }
struct HealthProbe { timeoutMs @0 :Int64; }
struct HealthProbeReply { replica @0 :Text; state @1 :ReplicaState; latencyUs @2 :Int64; ongoing @3 :UInt32; }
struct ReplicaQuery {}
struct ReplicaStatus { name @0 :Text; state @1 :ReplicaState; ongoing @2 :UInt32; completed @3 :UInt64; failed @4 :UInt64; }
struct ReplicaStateChanged { name @0 :Text; state @1 :ReplicaState; reason @2 :Text; }

# Deployments on the cluster (1360-1379).
struct StartReplica {
  deployment @0 :Text;
  version @1 :Text;
  name @2 :Text;
  leaseId @3 :UInt64;
  maxOngoingRequests @4 :UInt32;
  drainTimeoutMs @5 :Int64;
  startTimeoutMs @6 :Int64;
  tokensPerSecond @7 :Float64;
  firstTokenLatencyUs @8 :Int64;
  maxTokens @9 :UInt32;
  stallAfter @10 :UInt32;
  seed @11 :UInt64;
  owner @12 :Rt.ActorAddress;
  autoscaler @13 :Rt.ActorAddress;
  processCommand @14 :List(Text);
  processEnv @15 :List(Text);
  processWorkingDir @16 :Text;
  processPortEnv @17 :Text;
  processHealthPath @18 :Text;
  processReadyTimeoutMs @19 :Int64;
  gpuIndex @20 :UInt32 = 0xFFFFFFFF;
  gpuId @21 :Text;
  memoryBytes @22 :UInt64;
  computePercent @23 :UInt32;
  simulated @24 :Bool;
  startupDelayMs @25 :Int64;
  failEvery @26 :UInt32;
  crashAfter @27 :UInt32;
}
struct ReplicaStarted { name @0 :Text; replica @1 :Rt.ActorAddress; }
struct StopReplica { name @0 :Text; }
struct RunningReplica { name @0 :Text; deployment @1 :Text; leaseId @2 :UInt64; replica @3 :Rt.ActorAddress; }
struct AdoptReplica { name @0 :Text; owner @1 :Rt.ActorAddress; autoscaler @2 :Rt.ActorAddress; }
struct DeploymentCommand { op @0 :Text; name @1 :Text; body @2 :Data; caller @3 :Text; }
struct DeploymentCommandReply { body @0 :Data; }
