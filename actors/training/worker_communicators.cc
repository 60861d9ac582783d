#include "actors/training/worker_communicators.h"

#include <memory>
#include <string>
#include <utility>

#include "collectives/rendezvous.h"
#if defined(TROUPE_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "collectives/nccl_communicator.h"
#endif

namespace troupe::training {

namespace {

std::string Who(const ActorWorkerStart& start) {
  return "rank " + std::to_string(start.rank) + " of " + std::to_string(start.world_size) + " of job '" + start.job +
         "'";
}

}  // namespace

std::string_view CollectivesBackendName(CollectivesBackend backend) {
  return backend == CollectivesBackend::kNccl ? "nccl" : "gloo";
}

bool NcclBuilt() {
#if defined(TROUPE_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

StatusOr<CollectivesBackend> ChooseCollectivesBackend(const ActorWorkerStart& start, bool nccl_built) {
  const bool gpu = start.gpu_index != kNoGpu && !start.simulated;
  const std::string& asked = start.backend;
  if (asked == "gloo") return CollectivesBackend::kGloo;
  if (asked == "nccl") {
    if (!gpu) {
      return FailedPreconditionError(Who(start) + " asks for entry.backend nccl but has no real GPU slice (" +
                                     (start.gpu_index == kNoGpu ? "resources.slices: 0" : "its slice is simulated") +
                                     "); give the workers GPU slices on GPU nodes, or use backend gloo");
    }
    if (!nccl_built) {
      return FailedPreconditionError(Who(start) +
                                     " asks for entry.backend nccl but this troupe is built without NCCL (CUDA and "
                                     "NCCL were not found under TROUPE_CUDA_ROOT); rebuild with them, or use backend gloo");
    }
    return CollectivesBackend::kNccl;
  }
  if (asked.empty() || asked == "auto") return gpu && nccl_built ? CollectivesBackend::kNccl : CollectivesBackend::kGloo;
  return InvalidArgumentError(Who(start) + ": unknown collectives backend '" + asked + "' (auto, gloo or nccl)");
}

CommunicatorFactory NcclCommunicatorFactory() {
#if defined(TROUPE_HAVE_CUDA)
  return [](runtime::Runtime&, const ActorWorkerStart& start,
            std::shared_ptr<collectives::AbortSignal> abort) -> StatusOr<std::unique_ptr<collectives::Communicator>> {
    // A formation aborted (the worker's stop, a lost peer) ends with the abort's reason.
    auto aborted = [&]() -> Status {
      const Status reason = abort->reason();
      return Status(reason.code(), Who(start) + ": formation aborted: " + reason.message());
    };
    if (abort->aborted()) return aborted();
    if (!start.rendezvous.valid()) {
      return FailedPreconditionError(Who(start) + " got no rendezvous store from its supervisor");
    }
    if (start.gpu_index == kNoGpu || start.simulated) {
      return FailedPreconditionError(Who(start) + " has no real GPU slice to run NCCL on");
    }
    // The id goes through the attempt's store under its own prefix (docs/collectives.md, "Forming
    // a group through the runtime"): one 128-byte key per group.
    // The store's calls watch the abort: a rank waiting for rank 0's id stops at once.
    const collectives::RendezvousClient store =
        collectives::RendezvousClient(start.rendezvous).WithPrefix("nccl/").WithAbort(abort);
    std::string id;
    if (start.rank == 0) {
      ASSIGN_OR_RETURN(id, collectives::NcclCommunicator::NewUniqueId());
      if (Status set = store.Set("id", id); !set.ok()) return abort->aborted() ? aborted() : set;
    } else {
      StatusOr<std::string> got = store.Get("id", kNcclIdWait);
      if (!got.ok()) return abort->aborted() ? aborted() : got.status();
      id = std::move(*got);
    }
    if (abort->aborted()) return aborted();
    collectives::NcclOptions options;
    options.rank = static_cast<int>(start.rank);
    options.world_size = static_cast<int>(start.world_size);
    options.device = static_cast<int>(start.gpu_index);
    options.unique_id = std::move(id);
    ASSIGN_OR_RETURN(auto communicator, collectives::NcclCommunicator::Create(options));
    {
      // The initialisation in flight is aborted (ncclCommAbort) as an op would be.
      collectives::AbortSignal::Registration aborts =
          abort->OnAbort([comm = communicator.get()](const Status& reason) { comm->Abort(reason); });
      Status ready = communicator->ready().Wait();
      if (!ready.ok() && abort->aborted()) return aborted();
      RETURN_IF_ERROR(ready);
    }
    return std::unique_ptr<collectives::Communicator>(std::move(communicator));
  };
#else
  return nullptr;
#endif
}

CommunicatorFactory WorkerCommunicatorFactory(CommunicatorFactory gloo, CommunicatorFactory nccl) {
  return [gloo = std::move(gloo), nccl = std::move(nccl)](
             runtime::Runtime& rt, const ActorWorkerStart& start,
             std::shared_ptr<collectives::AbortSignal> abort) -> StatusOr<std::unique_ptr<collectives::Communicator>> {
    ASSIGN_OR_RETURN(CollectivesBackend backend, ChooseCollectivesBackend(start, NcclBuilt()));
    const CommunicatorFactory& make = backend == CollectivesBackend::kNccl ? nccl : gloo;
    if (!make) {
      return FailedPreconditionError(Who(start) + ": this troupe is built without the " +
                                     std::string(CollectivesBackendName(backend)) +
                                     " collectives backend its group needs; run one worker, or rebuild with it");
    }
    return make(rt, start, std::move(abort));
  };
}

Status AllReduceHostBuffer(WorkerContext& context, void* data, size_t count, collectives::DataType type,
                           collectives::ReduceOp op) {
  collectives::Communicator* comm = context.communicator();
  if (comm == nullptr) {
    return FailedPreconditionError("rank " + std::to_string(context.rank()) + " of " +
                                   std::to_string(context.world_size()) + " has no communicator");
  }
  if (comm->backend() != "nccl" || count == 0) return comm->AllReduce(data, count, type, op).Wait();
#if defined(TROUPE_HAVE_CUDA)
  const size_t bytes = count * collectives::SizeOf(type);
  ASSIGN_OR_RETURN(actors::CappedAllocator * allocator, context.allocator());
  ASSIGN_OR_RETURN(void* device, allocator->Allocate(bytes));
  // cudaMemcpyDefault: unified addressing finds the slice's GPU whatever this thread's device is.
  Status status = OkStatus();
  if (cudaError_t in = cudaMemcpy(device, data, bytes, cudaMemcpyDefault); in != cudaSuccess) {
    status = InternalError(std::string("cudaMemcpy into the slice's buffer: ") + cudaGetErrorString(in));
  }
  if (status.ok()) status = comm->AllReduce(device, count, type, op).Wait();
  if (status.ok()) {
    if (cudaError_t out = cudaMemcpy(data, device, bytes, cudaMemcpyDefault); out != cudaSuccess) {
      status = InternalError(std::string("cudaMemcpy out of the slice's buffer: ") + cudaGetErrorString(out));
    }
  }
  allocator->Free(device).IgnoreError();
  return status;
#else
  return InternalError("an NCCL communicator in a troupe built without CUDA");
#endif
}

}  // namespace troupe::training
