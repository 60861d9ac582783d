// NcclCommunicator: the Communicator over NCCL, one rank per GPU, in NCCL's non-blocking mode so
// that initialisation and every operation can be aborted (docs/collectives.md, "NCCL on GPUs").
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "collectives/communicator.h"
#include "common/status.h"

namespace troupe::collectives {

/// What one rank needs to join an NCCL group.
struct NcclOptions {
  /// This rank, in [0, world_size).
  int rank = 0;
  /// Ranks in the group, >= 1; NCCL refuses two ranks of one group on the same GPU.
  int world_size = 1;
  /// CUDA device index of this rank's GPU (as cudaSetDevice counts them, i.e. after
  /// CUDA_VISIBLE_DEVICES), in [0, cudaGetDeviceCount()).
  int device = 0;
  /// The group's ncclUniqueId as bytes (exactly NCCL_UNIQUE_ID_BYTES = 128), made once by rank 0
  /// with NcclCommunicator::NewUniqueId() and handed to every rank by the caller (the job
  /// supervisor's message or the rendezvous store).
  std::string unique_id;
  /// How long initialisation may take, counted from when it starts (every rank has to call
  /// Create with the same id by then); past it the group is aborted with DeadlineExceeded.
  std::chrono::milliseconds init_timeout = Communicator::kDefaultTimeout;
};

/// One rank of an NCCL group: collectives on device memory of one GPU.
///
/// Lifecycle: Create() starts ncclCommInitRankConfig (non-blocking) and returns at once;
/// initialising -> ready (ready() completes OK) -> broken (an op failed or timed out, or Abort():
/// ncclCommAbort has been called, every later op fails with the same status) or destroyed.
/// Initialisation is the first op of the communicator's OpQueue, so ops issued before it finishes
/// queue behind it, and Abort() or init_timeout end an initialisation whose peers never join.
///
/// Each op runs on the OpQueue's thread: it enqueues the NCCL call on the communicator's own CUDA
/// stream and polls cudaStreamQuery and ncclCommGetAsyncError until the stream is done, the
/// communicator reports an error, or the communicator is aborted (then the op returns at once:
/// ncclCommAbort stops NCCL's kernels). Buffers must be device (or managed) memory of `device`;
/// host memory is refused with InvalidArgument.
///
/// Destruction: a healthy communicator is finalised (ncclCommFinalize, then ncclCommDestroy; up to
/// 10 s), a broken one, or one whose finalize does not finish, aborted (ncclCommAbort).
///
/// Thread-safety: every method may be called from any thread.
class NcclCommunicator final : public Communicator {
 public:
  /// A fresh ncclUniqueId as NCCL_UNIQUE_ID_BYTES bytes; made by rank 0 only (it also starts
  /// NCCL's bootstrap root in this process, which the other ranks connect to). Internal with
  /// NCCL's reason if it fails (no usable network interface: NCCL_SOCKET_IFNAME).
  static StatusOr<std::string> NewUniqueId();
  /// The number of CUDA devices; FailedPrecondition with CUDA's reason when there is no usable
  /// GPU or driver (the reason GPU tests print when they skip).
  static StatusOr<int> DeviceCount();

  /// Starts this rank's initialisation. InvalidArgument for a rank outside [0, world_size), a
  /// world_size < 1, a unique id that is not 128 bytes, a device outside [0, DeviceCount());
  /// FailedPrecondition without a GPU; Internal with NCCL's and CUDA's messages if the call to
  /// start fails. Completion of the initialisation: ready().
  static StatusOr<std::unique_ptr<NcclCommunicator>> Create(const NcclOptions& options);

  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  /// Completes when initialisation has: OK, or DeadlineExceeded (init_timeout passed: a rank did
  /// not join), the Abort() reason, or Internal/Unavailable with NCCL's error.
  Work ready() const { return ready_; }
  /// The CUDA device index of this rank.
  int device() const { return device_; }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string_view backend() const override { return "nccl"; }

  Work AllReduce(void* data, size_t count, DataType type, ReduceOp op,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work Broadcast(void* data, size_t count, DataType type, int root,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work AllGather(const void* send, void* recv, size_t count, DataType type,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work ReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                     std::chrono::milliseconds timeout = kDefaultTimeout) override;
  /// An allreduce (sum) of one float32 on a device buffer of its own, as torch.distributed's
  /// barrier on NCCL does.
  Work Barrier(std::chrono::milliseconds timeout = kDefaultTimeout) override;

  void Abort(const Status& reason) override;
  Status health() const override;

 private:
  NcclCommunicator(const NcclOptions& options);

  // Runs on the queue's thread: NCCL call `enqueue` (under comm_mu_, with the live comm), then the
  // wait for the stream. `what` names the call for errors.
  Status RunOp(const char* what, const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& enqueue);
  // Polls until the comm leaves ncclInProgress and, if `stream` is set, the stream is done.
  Status WaitForComm(const char* what, bool stream);
  // Status for an NCCL result on this rank (comm may be null).
  Status NcclError(const char* what, ncclResult_t result, ncclComm_t comm) const;
  Status CheckDeviceBuffer(const void* data, size_t count, DataType type, const char* what) const;
  Work Submit(std::string name, std::chrono::milliseconds timeout,
              std::function<ncclResult_t(ncclComm_t, cudaStream_t)> enqueue);
  void AbortComm();  // on_abort: ncclCommAbort once, under comm_mu_

  const int rank_;
  const int world_size_;
  const int device_;
  cudaStream_t stream_ = nullptr;
  void* barrier_buf_ = nullptr;  // one float32 on device_

  mutable std::mutex comm_mu_;  // guards comm_: ncclCommAbort frees it while the op thread polls
  ncclComm_t comm_ = nullptr;   // null once aborted or destroyed
  std::atomic<bool> aborted_{false};

  Work ready_ = Work::Pending();
  std::unique_ptr<OpQueue> queue_;
};

}  // namespace troupe::collectives
