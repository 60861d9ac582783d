// Actor workers on GPU slices form their group over NCCL (actors/training/worker_communicators.h):
// two ranks, each on its own GPU, made by the node agents' factory through a rendezvous store in a
// Runtime, allreduce a buffer that the slice's capped allocator gave them. Label gpu: skips, with
// the reason, where there are fewer than two GPUs.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <memory>
#include <thread>
#include <vector>

#include "actors/gpu_allocator.h"
#include "actors/training/worker_communicators.h"
#include "collectives/nccl_communicator.h"
#include "collectives/rendezvous.h"
#include "runtime/runtime.h"

namespace troupe::training {
namespace {

constexpr int kWorld = 2;
constexpr size_t kCount = 1 << 20;  // 4 MiB of float32 per rank

TEST(NcclActorWorkers, TwoRanksOnGpuSlicesAllReduceOverNcclInTheirCappedMemory) {
  auto devices = collectives::NcclCommunicator::DeviceCount();
  if (!devices.ok()) GTEST_SKIP() << "no usable GPU here: " << devices.status() << " (runs on a GPU machine)";
  if (*devices < kWorld) GTEST_SKIP() << "needs " << kWorld << " GPUs (one NCCL rank per GPU), found " << *devices;

  runtime::RuntimeConfig config;
  config.node_name = "nccl-actor-worker-test";
  config.transport.cluster_token = "nccl-actor-worker-test";
  runtime::CodecRegistry codecs;
  ASSERT_TRUE(collectives::AddRendezvousCodecs(codecs).ok());
  auto rt = runtime::Runtime::Start(config, std::move(codecs));
  ASSERT_TRUE(rt.ok()) << rt.status();
  const runtime::ActorRef store = (*rt)->Ref(collectives::SpawnRendezvousStore((*rt)->system()));

  const CommunicatorFactory factory = WorkerCommunicatorFactory();
  std::vector<Status> results(kWorld);
  std::vector<std::vector<float>> out(kWorld);
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < kWorld; ++rank) {
    ranks.emplace_back([&, rank] {
      ActorWorkerStart start;
      start.job = "nccl-test";
      start.rank = static_cast<uint32_t>(rank);
      start.world_size = kWorld;
      start.rendezvous = store;
      start.gpu_index = static_cast<uint32_t>(rank);
      start.memory_bytes = 64 << 20;
      results[rank] = [&]() -> Status {
        ASSIGN_OR_RETURN(auto comm, factory(**rt, start, std::make_shared<collectives::AbortSignal>()));
        if (comm->backend() != "nccl") return InternalError("backend " + std::string(comm->backend()));
        ASSIGN_OR_RETURN(auto device, actors::CudaDevice::Open(rank));
        actors::CappedAllocator allocator(*device, start.memory_bytes, "slice of GPU " + std::to_string(rank));
        ASSIGN_OR_RETURN(void* buffer, allocator.Allocate(kCount * sizeof(float)));
        std::vector<float> host(kCount, static_cast<float>(rank + 1));
        cudaSetDevice(rank);
        if (cudaMemcpy(buffer, host.data(), kCount * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) {
          return InternalError("cudaMemcpy to the slice's buffer failed");
        }
        RETURN_IF_ERROR(
            comm->AllReduce(buffer, kCount, collectives::DataType::kFloat32, collectives::ReduceOp::kSum).Wait());
        out[rank].resize(kCount);
        if (cudaMemcpy(out[rank].data(), buffer, kCount * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess) {
          return InternalError("cudaMemcpy from the slice's buffer failed");
        }
        return allocator.Free(buffer);
      }();
    });
  }
  for (auto& thread : ranks) thread.join();
  for (int rank = 0; rank < kWorld; ++rank) {
    ASSERT_TRUE(results[rank].ok()) << "rank " << rank << ": " << results[rank];
    for (size_t i = 0; i < kCount; ++i) ASSERT_EQ(out[rank][i], 3.0f) << "rank " << rank << ", element " << i;
  }
}

}  // namespace
}  // namespace troupe::training
