#include "collectives/nccl_communicator.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <thread>
#include <utility>

namespace troupe::collectives {
namespace {

using Clock = std::chrono::steady_clock;

// How long a finalize may take when a healthy communicator is destroyed before it is aborted.
constexpr std::chrono::milliseconds kFinalizeTimeout{10000};
// Polling: yield for the first kSpinFor of a wait (small collectives finish within it: the
// latency the benchmark measures), then sleep kPollInterval between polls so that a long wait
// (an initialisation whose peers are slow) does not hold a core.
constexpr std::chrono::microseconds kSpinFor{2000};
constexpr std::chrono::microseconds kPollInterval{50};

std::optional<ncclDataType_t> ToNccl(DataType type) {
  switch (type) {
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kFloat16: return ncclFloat16;
    case DataType::kBFloat16: return ncclBfloat16;
    case DataType::kFloat64: return ncclFloat64;
    case DataType::kInt32: return ncclInt32;
    case DataType::kInt64: return ncclInt64;
  }
  return std::nullopt;
}

std::optional<ncclRedOp_t> ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
  }
  return std::nullopt;
}

Status CudaError(const std::string& what, cudaError_t error) {
  return InternalError(what + ": " + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")");
}

// Runs `body` with `device` current on this thread and the caller's device restored after.
template <typename F>
Status OnDevice(int device, F&& body) {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  cudaError_t set = cudaSetDevice(device);
  if (set != cudaSuccess) return CudaError("cudaSetDevice(" + std::to_string(device) + ")", set);
  Status status = body();
  if (previous >= 0 && previous != device) cudaSetDevice(previous);
  return status;
}

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  auto x = reinterpret_cast<uintptr_t>(a);
  auto y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

}  // namespace

StatusOr<std::string> NcclCommunicator::NewUniqueId() {
  ncclUniqueId id;
  ncclResult_t result = ncclGetUniqueId(&id);
  if (result != ncclSuccess) {
    return InternalError(std::string("ncclGetUniqueId: ") + ncclGetErrorString(result) + ": " +
                         ncclGetLastError(nullptr) +
                         " (NCCL needs a usable network interface for its bootstrap; set NCCL_SOCKET_IFNAME)");
  }
  return std::string(id.internal, sizeof(id.internal));
}

StatusOr<int> NcclCommunicator::DeviceCount() {
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return FailedPreconditionError(std::string("no usable CUDA device: cudaGetDeviceCount: ") +
                                   cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")");
  }
  if (count == 0) return FailedPreconditionError("no CUDA device: cudaGetDeviceCount found 0");
  return count;
}

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(const NcclOptions& options) {
  if (options.world_size < 1) {
    return InvalidArgumentError("NcclCommunicator: world_size " + std::to_string(options.world_size) +
                                " (must be >= 1)");
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return InvalidArgumentError("NcclCommunicator: rank " + std::to_string(options.rank) + " outside [0, " +
                                std::to_string(options.world_size) + ")");
  }
  if (options.unique_id.size() != NCCL_UNIQUE_ID_BYTES) {
    return InvalidArgumentError("NcclCommunicator: the unique id has " + std::to_string(options.unique_id.size()) +
                                " bytes, NCCL's has " + std::to_string(NCCL_UNIQUE_ID_BYTES) +
                                " (pass NewUniqueId()'s bytes from rank 0 unchanged)");
  }
  if (options.init_timeout.count() <= 0) {
    return InvalidArgumentError("NcclCommunicator: init_timeout must be positive");
  }
  ASSIGN_OR_RETURN(int devices, DeviceCount());
  if (options.device < 0 || options.device >= devices) {
    return InvalidArgumentError("NcclCommunicator: device " + std::to_string(options.device) + " outside [0, " +
                                std::to_string(devices) + ") (CUDA devices visible here)");
  }
  std::unique_ptr<NcclCommunicator> comm(new NcclCommunicator(options));
  ncclUniqueId id;
  std::memcpy(id.internal, options.unique_id.data(), sizeof(id.internal));
  NcclCommunicator* self = comm.get();
  // Initialisation is the queue's first op: later ops wait behind it, and Abort() or its timeout
  // end it through ncclCommAbort like any op.
  comm->ready_ = comm->queue_->Submit(
      [self, id]() mutable -> Status {
        // On the queue's thread or on a thread waiting for ready() (OpQueue: the waiter runs the
        // op): that thread's current device is restored after.
        return OnDevice(self->device_, [&]() -> Status {
          cudaError_t made = cudaStreamCreateWithFlags(&self->stream_, cudaStreamNonBlocking);
          if (made != cudaSuccess) return CudaError("cudaStreamCreateWithFlags", made);
          cudaError_t alloc = cudaMalloc(&self->barrier_buf_, sizeof(float));
          if (alloc != cudaSuccess) return CudaError("cudaMalloc (barrier buffer)", alloc);
          ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
          config.blocking = 0;  // init and every op return ncclInProgress: abortable, polled below
          ncclComm_t comm = nullptr;
          ncclResult_t result = ncclCommInitRankConfig(&comm, self->world_size_, id, self->rank_, &config);
          {
            std::lock_guard<std::mutex> lock(self->comm_mu_);
            if (comm != nullptr) {
              if (self->aborted_) {
                ncclCommAbort(comm);  // aborted while the call ran: on_abort found no comm yet
                return CancelledError("aborted during initialisation");
              }
              self->comm_ = comm;
            }
          }
          if (result != ncclSuccess && result != ncclInProgress) {
            return self->NcclError("ncclCommInitRankConfig", result, comm);
          }
          if (comm == nullptr) return InternalError("ncclCommInitRankConfig returned no communicator");
          return self->WaitForComm("ncclCommInitRankConfig", /*stream=*/false);
        });
      },
      options.init_timeout,
      "NCCL initialisation (rank " + std::to_string(options.rank) + " of " + std::to_string(options.world_size) +
          ", GPU " + std::to_string(options.device) + ")");
  return comm;
}

NcclCommunicator::NcclCommunicator(const NcclOptions& options)
    : rank_(options.rank), world_size_(options.world_size), device_(options.device) {
  queue_ = std::make_unique<OpQueue>([this](const Status&) { AbortComm(); });
}

NcclCommunicator::~NcclCommunicator() {
  // A healthy, initialised communicator is finalised (its issued work flushed, resources freed in
  // order); anything else is aborted by the queue's destructor (Cancelled -> on_abort).
  if (ready_.done() && queue_->health().ok()) {
    Work finalize = queue_->Submit(
        [this]() -> Status {
          {
            std::lock_guard<std::mutex> lock(comm_mu_);
            if (comm_ == nullptr) return CancelledError("aborted");
            ncclResult_t result = ncclCommFinalize(comm_);
            if (result != ncclSuccess && result != ncclInProgress) return NcclError("ncclCommFinalize", result, comm_);
          }
          RETURN_IF_ERROR(WaitForComm("ncclCommFinalize", /*stream=*/false));
          std::lock_guard<std::mutex> lock(comm_mu_);
          if (comm_ == nullptr) return CancelledError("aborted");
          // Non-blocking: NCCL may free the rest on a thread of its own (ncclInProgress).
          ncclResult_t result = ncclCommDestroy(comm_);
          comm_ = nullptr;
          if (result != ncclSuccess && result != ncclInProgress) return NcclError("ncclCommDestroy", result, nullptr);
          return OkStatus();
        },
        kFinalizeTimeout, "ncclCommFinalize");
    finalize.Wait().IgnoreError();  // bounded: the queue aborts it after kFinalizeTimeout
  }
  queue_.reset();  // aborts (ncclCommAbort) whatever is left, joins the op thread
  if (stream_ != nullptr || barrier_buf_ != nullptr) {
    OnDevice(device_, [&] {
      if (barrier_buf_ != nullptr) cudaFree(barrier_buf_);
      if (stream_ != nullptr) cudaStreamDestroy(stream_);
      return OkStatus();
    }).IgnoreError();
  }
}

void NcclCommunicator::AbortComm() {
  aborted_ = true;
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (comm_ == nullptr) return;
  // Sets NCCL's abort flag (its kernels, proxy and init threads stop) and frees the communicator
  // (in non-blocking mode possibly on NCCL's own thread, returning ncclInProgress; NCCL frees a
  // process's ranks of one group once all of them are destroyed or aborted); the op thread polling
  // under comm_mu_ sees comm_ == null and returns.
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::Abort(const Status& reason) { queue_->Abort(reason); }

Status NcclCommunicator::health() const { return queue_->health(); }

Status NcclCommunicator::NcclError(const char* what, ncclResult_t result, ncclComm_t comm) const {
  const char* last = ncclGetLastError(comm);
  std::string message = std::string(what) + " on rank " + std::to_string(rank_) + " of " +
                        std::to_string(world_size_) + " (GPU " + std::to_string(device_) +
                        "): " + ncclGetErrorString(result);
  if (last != nullptr && last[0] != '\0') message += ": " + std::string(last);
  message += " (NCCL_DEBUG=WARN shows NCCL's own log)";
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage: return InvalidArgumentError(message);
    case ncclRemoteError:  // a peer failed or the network between the ranks broke
    case ncclSystemError: return UnavailableError(message);
    default: return InternalError(message);
  }
}

Status NcclCommunicator::WaitForComm(const char* what, bool stream) {
  const auto start = Clock::now();
  while (true) {
    {
      std::lock_guard<std::mutex> lock(comm_mu_);
      if (comm_ == nullptr) return CancelledError(std::string(what) + ": the communicator was aborted");
      ncclResult_t async = ncclSuccess;
      ncclResult_t result = ncclCommGetAsyncError(comm_, &async);
      if (result != ncclSuccess) return NcclError("ncclCommGetAsyncError", result, comm_);
      if (async != ncclSuccess && async != ncclInProgress) return NcclError(what, async, comm_);
      if (async == ncclSuccess) {
        if (!stream) return OkStatus();
        cudaError_t query = cudaStreamQuery(stream_);
        if (query == cudaSuccess) return OkStatus();
        if (query != cudaErrorNotReady) {
          return CudaError(std::string(what) + ": cudaStreamQuery on rank " + std::to_string(rank_) + " (GPU " +
                               std::to_string(device_) + ")",
                           query);
        }
      }
    }
    if (Clock::now() - start < kSpinFor) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kPollInterval);
    }
  }
}

Status NcclCommunicator::RunOp(const char* what,
                               const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& enqueue) {
  // Runs on the queue's thread or on the thread that waits for the op (OpQueue: the waiter runs the
  // op), whose current device is restored after.
  return OnDevice(device_, [&]() -> Status {
    {
      std::lock_guard<std::mutex> lock(comm_mu_);
      if (comm_ == nullptr) return CancelledError(std::string(what) + ": the communicator was aborted");
      ncclResult_t result = enqueue(comm_, stream_);
      if (result != ncclSuccess && result != ncclInProgress) return NcclError(what, result, comm_);
    }
    return WaitForComm(what, /*stream=*/true);
  });
}

Work NcclCommunicator::Submit(std::string name, std::chrono::milliseconds timeout,
                              std::function<ncclResult_t(ncclComm_t, cudaStream_t)> enqueue) {
  if (!enqueue) return queue_->Submit([] { return OkStatus(); }, timeout, std::move(name));  // count 0
  const std::string what = name;
  return queue_->Submit([this, what, enqueue = std::move(enqueue)] { return RunOp(what.c_str(), enqueue); },
                        timeout, std::move(name));
}

Status NcclCommunicator::CheckDeviceBuffer(const void* data, size_t count, DataType type, const char* what) const {
  RETURN_IF_ERROR(CheckBuffer(data, count, type, what));
  if (count == 0) return OkStatus();
  cudaPointerAttributes attributes;
  cudaError_t error = cudaPointerGetAttributes(&attributes, data);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return InvalidArgumentError(std::string(what) + ": not a CUDA pointer (cudaPointerGetAttributes: " +
                                cudaGetErrorString(error) + ")");
  }
  if (attributes.type == cudaMemoryTypeManaged) return OkStatus();
  if (attributes.type != cudaMemoryTypeDevice) {
    return InvalidArgumentError(std::string(what) + ": host memory; NCCL needs device memory of GPU " +
                                std::to_string(device_) + " (cudaMalloc on that device)");
  }
  if (attributes.device != device_) {
    return InvalidArgumentError(std::string(what) + ": memory of GPU " + std::to_string(attributes.device) +
                                ", this rank's communicator is on GPU " + std::to_string(device_));
  }
  return OkStatus();
}

Work NcclCommunicator::AllReduce(void* data, size_t count, DataType type, ReduceOp op,
                                 std::chrono::milliseconds timeout) {
  auto nccl_type = ToNccl(type);
  auto nccl_op = ToNccl(op);
  if (!nccl_type) return Work::Done(InvalidArgumentError("AllReduce: unknown data type"));
  if (!nccl_op) return Work::Done(InvalidArgumentError("AllReduce: unknown reduce op"));
  if (Status s = CheckDeviceBuffer(data, count, type, "AllReduce data"); !s.ok()) return Work::Done(s);
  std::string name = "ncclAllReduce(" + std::to_string(count) + " " + std::string(DataTypeName(type)) + ", " +
                     std::string(ReduceOpName(op)) + ")";
  if (count == 0) return Submit(std::move(name), timeout, nullptr);
  return Submit(std::move(name), timeout, [=](ncclComm_t comm, cudaStream_t stream) {
    return ncclAllReduce(data, data, count, *nccl_type, *nccl_op, comm, stream);
  });
}

Work NcclCommunicator::Broadcast(void* data, size_t count, DataType type, int root,
                                 std::chrono::milliseconds timeout) {
  auto nccl_type = ToNccl(type);
  if (!nccl_type) return Work::Done(InvalidArgumentError("Broadcast: unknown data type"));
  if (root < 0 || root >= world_size_) {
    return Work::Done(InvalidArgumentError("Broadcast: root " + std::to_string(root) + " outside [0, " +
                                           std::to_string(world_size_) + ")"));
  }
  if (Status s = CheckDeviceBuffer(data, count, type, "Broadcast data"); !s.ok()) return Work::Done(s);
  std::string name = "ncclBroadcast(" + std::to_string(count) + " " + std::string(DataTypeName(type)) +
                     ", root " + std::to_string(root) + ")";
  if (count == 0) return Submit(std::move(name), timeout, nullptr);
  return Submit(std::move(name), timeout, [=](ncclComm_t comm, cudaStream_t stream) {
    return ncclBroadcast(data, data, count, *nccl_type, root, comm, stream);
  });
}

Work NcclCommunicator::AllGather(const void* send, void* recv, size_t count, DataType type,
                                 std::chrono::milliseconds timeout) {
  auto nccl_type = ToNccl(type);
  if (!nccl_type) return Work::Done(InvalidArgumentError("AllGather: unknown data type"));
  if (Status s = CheckDeviceBuffer(send, count, type, "AllGather send"); !s.ok()) return Work::Done(s);
  if (count > std::numeric_limits<size_t>::max() / static_cast<size_t>(world_size_)) {
    return Work::Done(InvalidArgumentError("AllGather: recv of world_size * count elements overflows"));
  }
  const size_t total = count * static_cast<size_t>(world_size_);
  if (Status s = CheckDeviceBuffer(recv, total, type, "AllGather recv"); !s.ok()) return Work::Done(s);
  if (Overlap(send, count * SizeOf(type), recv, total * SizeOf(type))) {
    return Work::Done(InvalidArgumentError("AllGather: send and recv overlap (they must not)"));
  }
  std::string name = "ncclAllGather(" + std::to_string(count) + " " + std::string(DataTypeName(type)) + ")";
  if (count == 0) return Submit(std::move(name), timeout, nullptr);
  return Submit(std::move(name), timeout, [=](ncclComm_t comm, cudaStream_t stream) {
    return ncclAllGather(send, recv, count, *nccl_type, comm, stream);
  });
}

Work NcclCommunicator::ReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                                     std::chrono::milliseconds timeout) {
  auto nccl_type = ToNccl(type);
  auto nccl_op = ToNccl(op);
  if (!nccl_type) return Work::Done(InvalidArgumentError("ReduceScatter: unknown data type"));
  if (!nccl_op) return Work::Done(InvalidArgumentError("ReduceScatter: unknown reduce op"));
  if (count > std::numeric_limits<size_t>::max() / static_cast<size_t>(world_size_)) {
    return Work::Done(InvalidArgumentError("ReduceScatter: send of world_size * count elements overflows"));
  }
  const size_t total = count * static_cast<size_t>(world_size_);
  if (Status s = CheckDeviceBuffer(send, total, type, "ReduceScatter send"); !s.ok()) return Work::Done(s);
  if (Status s = CheckDeviceBuffer(recv, count, type, "ReduceScatter recv"); !s.ok()) return Work::Done(s);
  if (Overlap(send, total * SizeOf(type), recv, count * SizeOf(type))) {
    return Work::Done(InvalidArgumentError("ReduceScatter: send and recv overlap (they must not)"));
  }
  std::string name = "ncclReduceScatter(" + std::to_string(count) + " " + std::string(DataTypeName(type)) + ", " +
                     std::string(ReduceOpName(op)) + ")";
  if (count == 0) return Submit(std::move(name), timeout, nullptr);
  return Submit(std::move(name), timeout, [=](ncclComm_t comm, cudaStream_t stream) {
    return ncclReduceScatter(send, recv, count, *nccl_type, *nccl_op, comm, stream);
  });
}

Work NcclCommunicator::Barrier(std::chrono::milliseconds timeout) {
  return Submit("barrier (ncclAllReduce of one float32)", timeout, [this](ncclComm_t comm, cudaStream_t stream) {
    return ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm, stream);
  });
}

}  // namespace troupe::collectives
