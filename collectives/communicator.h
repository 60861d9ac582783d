// Communicator: collective operations among the ranks of a group (the workers of one training
// job), one interface over NCCL (GPUs) and Gloo (CPUs). Modelled on torch.distributed's
// ProcessGroup (async work handles, one op queue per group) and Ray's collective library (the
// group is formed through the runtime, not through a TCP store of its own). docs/collectives.md.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"

namespace troupe::collectives {

/// Element types of collective buffers. float16 is IEEE binary16, bfloat16 the upper half of a
/// float32 (both reduced in float32 and rounded to nearest even, as NCCL and Gloo do).
enum class DataType : uint8_t { kFloat32, kFloat16, kBFloat16, kFloat64, kInt32, kInt64 };
/// The reductions of allreduce and reduce-scatter.
enum class ReduceOp : uint8_t { kSum, kMin, kMax };

/// Bytes per element.
size_t SizeOf(DataType type);
/// "float32", "float16", "bfloat16", "float64", "int32", "int64".
std::string_view DataTypeName(DataType type);
/// "sum", "min", "max".
std::string_view ReduceOpName(ReduceOp op);

/// The completion of one collective operation. Copyable (copies share the operation).
/// Thread-safety: every method may be called from any thread.
class Work {
 public:
  /// A work that is already complete with `status` (an argument refused before it was queued).
  static Work Done(Status status);
  /// A work not complete yet; its owner completes it once with Complete().
  static Work Pending();

  /// Waits until the operation completes and returns its status: OK, or the error of this rank or
  /// of the group (Unavailable: a peer was lost or the group aborted; DeadlineExceeded: the
  /// operation's timeout passed, which also aborts the group, as NCCL's blocking semantics
  /// require). If the operation is next in an idle OpQueue, Wait() runs it on this thread instead
  /// of waiting for the queue's thread (OpQueue, "The waiter runs the op"); its status is the same.
  Status Wait() const;
  /// Waits at most `limit`; nullopt if still running then (the operation is not cancelled).
  std::optional<Status> WaitFor(std::chrono::milliseconds limit) const;
  /// Whether it has completed.
  bool done() const;
  /// Runs `callback` once with the status when the operation completes (at once, on this
  /// thread, if it has already); otherwise on the thread that completes it.
  void OnComplete(std::function<void(const Status&)> callback) const;

  /// Completes the operation; later calls are ignored. Returns whether this call completed it.
  bool Complete(Status status) const;

  /// Whether both handles are the same operation.
  friend bool operator==(const Work& a, const Work& b) { return a.state_ == b.state_; }
  friend bool operator!=(const Work& a, const Work& b) { return !(a == b); }

 private:
  friend class OpQueue;
  struct State;
  explicit Work(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

/// Collective operations of one rank of a group of `world_size()` ranks.
///
/// Every rank must issue the same operations in the same order with the same counts, types and
/// roots (as with NCCL, Gloo and torch.distributed); the implementations check what they can
/// locally (InvalidArgument, returned as an already-failed Work, nothing queued) and cannot detect
/// a mismatch across ranks beyond the operation's timeout.
///
/// Operations are asynchronous: each returns at once with a Work, and the operations of one
/// communicator run one at a time in the order they were issued. Buffers must stay valid and
/// untouched until the Work completes. Buffers are host memory for Gloo and device memory (of the
/// communicator's GPU) for NCCL. `count` is in elements, 0 allowed (completes OK without touching
/// the buffers, still in order).
///
/// Failure: a timeout, a lost peer (Abort(), called by the runtime's monitors through
/// PeerWatch, collectives/peer_watch.h) or a transport error fails the operation in flight and
/// every queued and later one with the same Unavailable or DeadlineExceeded status; the
/// communicator is then broken for good (a job restarts its group with a new one), as an aborted
/// NCCL communicator is.
///
/// Thread-safety: every method may be called from any thread.
class Communicator {
 public:
  /// The timeout an operation gets when none is given: generous for a 256 MiB allreduce on a
  /// slow network, far below NCCL's and Gloo's 30-minute defaults.
  static constexpr std::chrono::milliseconds kDefaultTimeout{60000};

  virtual ~Communicator() = default;

  /// This rank, in [0, world_size()).
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// "gloo" or "nccl".
  virtual std::string_view backend() const = 0;

  /// In place: `data` (count elements) holds the reduction over every rank's `data`.
  virtual Work AllReduce(void* data, size_t count, DataType type, ReduceOp op,
                         std::chrono::milliseconds timeout = kDefaultTimeout) = 0;
  /// In place: every rank's `data` becomes `root`'s.
  virtual Work Broadcast(void* data, size_t count, DataType type, int root,
                         std::chrono::milliseconds timeout = kDefaultTimeout) = 0;
  /// `recv` (world_size() * count elements) gets every rank's `send` (count elements) in rank
  /// order. `send` and `recv` must not overlap.
  virtual Work AllGather(const void* send, void* recv, size_t count, DataType type,
                         std::chrono::milliseconds timeout = kDefaultTimeout) = 0;
  /// `recv` (count elements) gets this rank's block of the reduction of every rank's `send`
  /// (world_size() * count elements): elements [rank * count, (rank + 1) * count).
  virtual Work ReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                             std::chrono::milliseconds timeout = kDefaultTimeout) = 0;
  /// Completes on every rank once every rank has issued it.
  virtual Work Barrier(std::chrono::milliseconds timeout = kDefaultTimeout) = 0;

  /// Breaks the communicator: the operation in flight and every queued and later one fail with
  /// `reason` (use Unavailable naming the lost peer), at once, without waiting for the library's
  /// own timeout. Idempotent: the first reason wins.
  virtual void Abort(const Status& reason) = 0;
  /// The reason the communicator is broken; OK while it works.
  virtual Status health() const = 0;
};

/// InvalidArgument naming the problem if a buffer of `count` elements of `type` would overflow
/// size_t bytes, or a null pointer is given for a non-empty buffer.
Status CheckBuffer(const void* data, size_t count, DataType type, std::string_view what);

/// One operation queue with its own thread: the order and failure semantics every Communicator
/// shares (above). An implementation submits each operation as a function that runs the library
/// call on the queue's thread and returns its status; the queue enforces the timeout by failing the
/// Work at the deadline and calling the implementation's `on_abort` (which must make the library
/// call return soon: ncclCommAbort, closing Gloo's pairs). After a failure every later operation
/// fails with the same status without running.
///
/// The waiter runs the op: handing every op to the queue's thread cost one thread wake-up to start
/// it and one to report it done (17 us an op on an H200 host against 0.7-0.9 us for an NCCL call
/// made directly; 40-70 us on a loaded 2-core VM). So when Work::Wait() is called on an op that is
/// at the head of the queue while none is running, the waiting thread claims it and runs it itself,
/// exactly as the queue's thread would (same order, the watchdog's timeout, Abort): Submit() still
/// returns at once, and WaitFor() and OnComplete() never run ops.
///
/// An abort (Abort(), a timeout) completes the op in flight only once its library call has
/// returned (on_abort makes it return soon: ncclCommAbort, Gloo's pairs failed), whoever runs it:
/// until then the call may still write the caller's buffers, which the caller frees as soon as
/// the Work completes. (Completing it at the abort let a TSan run catch Gloo's allreduce writing
/// a gradient buffer the example trainer had already freed.) Queued ops fail at once.
class OpQueue {
 public:
  /// `on_abort` runs once, on the thread that first fails the queue (Abort() or a timeout), with
  /// the reason. It must not call back into the queue.
  explicit OpQueue(std::function<void(const Status&)> on_abort);
  /// Aborts with Cancelled ("communicator destroyed") if still working, then joins the thread.
  ~OpQueue();
  OpQueue(const OpQueue&) = delete;
  OpQueue& operator=(const OpQueue&) = delete;

  /// Queues `op`; its Work completes with what `op` returns, or with the queue's failure.
  /// `timeout` counts from when the op starts running (ops queued behind a slow one do not expire
  /// in the queue), as ProcessGroupNCCL's watchdog counts it.
  Work Submit(std::function<Status()> op, std::chrono::milliseconds timeout, std::string name);
  /// Fails the op in flight (its Work completes once its call has returned) and every queued and
  /// later one (at once) with `reason`; calls on_abort once.
  void Abort(const Status& reason);
  /// OK while no op failed and no abort happened.
  Status health() const;

 private:
  // Lets Work::Wait() reach the queue while it exists: null once the destructor has started.
  struct Helper {
    std::mutex mu;
    std::condition_variable cv;
    OpQueue* queue = nullptr;
    int active = 0;  // Wait() calls inside RunHere
  };
  struct Op {
    std::function<Status()> run;
    std::chrono::milliseconds timeout;
    std::chrono::steady_clock::time_point deadline;  // set when it starts
    std::string name;
    Work work;
  };
  void Run();
  void Watchdog();
  // Runs `work` on this thread if it is at the head of the queue and nothing runs (Work::Wait()).
  void RunHere(const Work& work);
  // Takes the queue's head as the running op (under `lock`), runs it unlocked, completes its Work.
  void Execute(std::unique_lock<std::mutex>& lock);
  // Under mu_: records `reason` (the first wins), moves the running and queued ops' Works to
  // `failed`; whether on_abort is still to be called.
  bool FailLocked(const Status& reason, std::vector<Work>* failed);

  std::function<void(const Status&)> on_abort_;
  std::shared_ptr<Helper> helper_;
  mutable std::mutex mu_;
  std::condition_variable cv_;        // the queue's thread: an op queued, the running one done, stop
  std::condition_variable watch_cv_;  // the watchdog: an earlier deadline, stop
  // The deadline the watchdog sleeps until (max: no op running); an op that starts with a later
  // one does not wake it (it re-reads the running op's deadline when it wakes).
  std::chrono::steady_clock::time_point watching_until_ = std::chrono::steady_clock::time_point::max();
  std::deque<Op> queue_;
  std::optional<Op> running_;
  Status failure_;
  bool abort_called_ = false;
  bool stopping_ = false;
  std::thread thread_;
  std::thread watchdog_;
};

}  // namespace troupe::collectives
