// Which collectives backend an actor worker's group uses, and the NCCL factory for workers on GPU
// slices (docs/jobs.md, "Actor workers"; docs/collectives.md). The node agents give their workers
// WorkerCommunicatorFactory(): NCCL on a real GPU slice where troupe is built with NCCL, Gloo
// otherwise or when the job asks for it (entry.backend).
#pragma once

#include <cstdint>
#include <string_view>

#include "actors/training/actor_worker.h"
#include "actors/training/messages.h"
#include "common/status.h"

namespace troupe::training {

enum class CollectivesBackend : uint8_t { kGloo, kNccl };

/// "gloo" or "nccl".
std::string_view CollectivesBackendName(CollectivesBackend backend);

/// Whether this troupe was built with NCCL (CUDA and NCCL found at build time; TROUPE_HAVE_CUDA).
bool NcclBuilt();

/// The backend a worker's group uses, from its start (ActorWorkerStart::backend, the job's
/// entry.backend, and its slice) and whether NCCL is built here (`nccl_built`):
///  - "gloo": Gloo, always (CPU tensors, or a GPU job that wants host collectives).
///  - "nccl": NCCL; FailedPrecondition when the worker has no real GPU slice (resources.slices: 0,
///    or a simulated slice) or troupe is built without NCCL, naming which.
///  - "auto" or empty (the default): NCCL when the worker has a real GPU slice and NCCL is built,
///    Gloo otherwise, as torch.distributed's default backend picks NCCL for CUDA devices.
/// The supervisor turns `auto` into `gloo` for a group with any rank lacking a real GPU slice
/// (job_supervisor.cc, StartActorWorkers), so every rank of a group gets the same answer unless
/// their nodes' builds differ (NCCL built on some only): those ranks would fail their rendezvous
/// (each waits for the other backend's keys) with a timeout.
/// InvalidArgument for another backend name (the spec parser allows only these three).
StatusOr<CollectivesBackend> ChooseCollectivesBackend(const ActorWorkerStart& start, bool nccl_built);

/// NcclCommunicator (collectives/nccl_communicator.h) on the worker's GPU (gpu_index as the node
/// agent's process counts CUDA devices): rank 0 makes the group's ncclUniqueId and sets it in the
/// attempt's rendezvous store as "nccl/id"; every other rank gets it from there (waiting up to
/// kNcclIdWait), then each initialises and waits until the group is ready (init_timeout
/// Communicator::kDefaultTimeout). Errors: FailedPrecondition without a store or a GPU slice;
/// the store's (DeadlineExceeded naming the key when rank 0 never sets it); Create()'s and
/// ready()'s. An empty function where troupe is built without NCCL.
CommunicatorFactory NcclCommunicatorFactory();

/// How long a rank other than 0 waits for rank 0's NCCL id: rank 0 may start later (its node
/// spawns it later) but sets the id before its own initialisation, which waits as long.
inline constexpr std::chrono::milliseconds kNcclIdWait{60000};

/// The node agents' factory: ChooseCollectivesBackend(start, NcclBuilt()), then `gloo` or `nccl`
/// (by default GlooCommunicatorFactory() and NcclCommunicatorFactory()). FailedPrecondition
/// naming the backend when the chosen one is an empty function (not built).
CommunicatorFactory WorkerCommunicatorFactory(CommunicatorFactory gloo = GlooCommunicatorFactory(),
                                              CommunicatorFactory nccl = NcclCommunicatorFactory());

/// An allreduce of a host buffer (`data`, `count` elements of `type`) through the context's
/// communicator, for worker types whose tensors live on the host (the example trainer): Gloo
/// reduces it in place; NCCL, which needs device memory, through a buffer of the worker's slice
/// taken from its CappedAllocator (so it counts against the slice's memory: ResourceExhausted
/// beyond it), copied in and out. Blocks until done. FailedPrecondition without a communicator;
/// the op's errors (Unavailable when the group was lost).
Status AllReduceHostBuffer(WorkerContext& context, void* data, size_t count, collectives::DataType type,
                           collectives::ReduceOp op);

}  // namespace troupe::training
