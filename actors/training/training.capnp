# The training protocol: the job supervisor (on the head) and node agents (process workers), and
# clients and the head's jobs registry (type ids 1200-1299, actors/training/messages.h).
@0xb7e4c2a19d3f5061;

$import "/capnp/c++.capnp".namespace("troupe::training::wire");
using Rt = import "/runtime/messages.capnp";

# Supervisor -> node agent: start one worker process of a job's attempt on its lease's slice.
struct StartWorker {
  job @0 :Text;
  attempt @1 :UInt64;
  rank @2 :UInt32;
  argv @3 :List(Text);
  env @4 :List(Text);            # NAME=value: the spec's, the torchrun contract's, troupe's
  workingDir @5 :Text;
  watchdogMs @6 :Int64;          # silent (no output, no progress file) longer than this: hung; 0: never
  supervisor @7 :Rt.ActorAddress;
  leaseId @8 :UInt64;
  gpuIndex @9 :UInt32;           # 0xFFFFFFFF: no GPU
  gpuId @10 :Text;
  memoryBytes @11 :UInt64;
  computePercent @12 :UInt32;
  simulated @13 :Bool;
  pickMasterPort @14 :Bool;      # rank 0: the agent picks a free port, sets MASTER_PORT, replies with it
  preload @15 :List(Text);       # Python modules a standby interpreter imports ahead (entry.preload)
}
struct WorkerStarted { rank @0 :UInt32; pid @1 :Int64; masterPort @2 :UInt32; logPath @3 :Text; standby @4 :Bool; }
# Supervisor -> node agent: stop (SIGKILL the process groups of) the job's workers of every
# attempt up to `attempt`; `final`: the job runs no more, and its standby interpreters go too.
# Reply: WorkersStopped.
struct StopWorkers { job @0 :Text; attempt @1 :UInt64; final @2 :Bool; }
struct WorkersStopped { count @0 :UInt32; }
# Node agent -> supervisor: a worker ended (exited, was killed, or was found hung and killed).
struct WorkerExited {
  job @0 :Text;
  attempt @1 :UInt64;
  rank @2 :UInt32;
  exitCode @3 :Int32;            # -1 when killed by a signal
  signal @4 :Int32;              # 0 when it exited
  hung @5 :Bool;
  reason @6 :Text;
  infra @7 :Bool;                # an actor worker's group was lost (not the job's fault)
}
# Client -> head: an operation on jobs (submit, list, show, events, stop, resume, delete, models).
# `body` is JSON (the job spec for submit); the reply's too (docs/jobs.md shows both).
struct JobCommand { op @0 :Text; name @1 :Text; body @2 :Text; caller @3 :Text; }
struct JobCommandReply { body @0 :Text; }
# Client -> node agent: a worker's log file from `offset` (bytes), at most `maxBytes`.
struct ReadWorkerLog { job @0 :Text; attempt @1 :UInt64; rank @2 :UInt32; offset @3 :UInt64; maxBytes @4 :UInt32; }
struct WorkerLogChunk { data @0 :Data; nextOffset @1 :UInt64; size @2 :UInt64; running @3 :Bool; }
# A worker a node runs (or ran: exited ones the node still remembers), as it reports it when it
# joins a head, and to a supervisor that adopts the job's workers after a head restart. A process
# worker has its pid (0: exited); an actor worker its actor (empty: exited).
struct RunningWorker {
  job @0 :Text; attempt @1 :UInt64; rank @2 :UInt32; pid @3 :Int64; logPath @4 :Text;
  worker @5 :Rt.ActorAddress;
}
# Supervisor -> node agent: the job's workers of `attempt` (processes and actors) report to
# `supervisor` from now on. Reply: WorkersAdopted, the ranks still running and the exits not
# reported to anyone yet.
struct AdoptWorkers { job @0 :Text; attempt @1 :UInt64; supervisor @2 :Rt.ActorAddress; }
struct WorkersAdopted { running @0 :List(RunningWorker); exited @1 :List(WorkerExited); }

# Actor workers (type ids 1650-1679; docs/jobs.md, "Actor workers").
# Supervisor -> node: the arguments of a remote spawn of one worker actor of a job's attempt.
struct ActorWorkerStart {
  job @0 :Text;
  type @1 :Text;                 # entry.actor: the registered worker type
  attempt @2 :UInt64;
  rank @3 :UInt32;
  worldSize @4 :UInt32;
  env @5 :List(Text);            # entry.env, NAME=value
  checkpointDir @6 :Text;        # the attempt's staging directory
  resumeDir @7 :Text;            # empty: start fresh
  resumeStep @8 :UInt64;
  supervisor @9 :Rt.ActorAddress;
  rendezvous @10 :Rt.ActorAddress;  # the attempt's rendezvous store (empty for one worker)
  gpuIndex @11 :UInt32;          # 0xFFFFFFFF: no GPU
  gpuId @12 :Text;
  memoryBytes @13 :UInt64;
  simulated @14 :Bool;
  checkpointNode @15 :UInt64;    # the node that commits the job's checkpoints (0: none given)
  backend @16 :Text;             # entry.backend: auto (or empty), gloo, nccl
}
# Supervisor -> worker actor: stop.
struct StopActorWorker { reason @0 :Text; }
# Supervisor -> every worker actor of an attempt once all are spawned: the group's actors by rank.
struct ActorWorkerPeers { attempt @0 :UInt64; workers @1 :List(Rt.ActorAddress); }
# Worker actor -> supervisor: a point of its attempt's start (1 formed, 2 first step; recovery.h).
struct ActorWorkerProgress { attempt @0 :UInt64; rank @1 :UInt32; point @2 :UInt8; }
