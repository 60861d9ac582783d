#include "collectives/communicator.h"

#include <limits>
#include <utility>
#include <vector>

namespace troupe::collectives {

size_t SizeOf(DataType type) {
  switch (type) {
    case DataType::kFloat32: return 4;
    case DataType::kFloat16: return 2;
    case DataType::kBFloat16: return 2;
    case DataType::kFloat64: return 8;
    case DataType::kInt32: return 4;
    case DataType::kInt64: return 8;
  }
  return 0;
}

std::string_view DataTypeName(DataType type) {
  switch (type) {
    case DataType::kFloat32: return "float32";
    case DataType::kFloat16: return "float16";
    case DataType::kBFloat16: return "bfloat16";
    case DataType::kFloat64: return "float64";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
  }
  return "unknown";
}

std::string_view ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
  }
  return "unknown";
}

Status CheckBuffer(const void* data, size_t count, DataType type, std::string_view what) {
  const size_t size = SizeOf(type);
  if (size == 0) return InvalidArgumentError(std::string(what) + ": unknown data type");
  if (count > std::numeric_limits<size_t>::max() / size) {
    return InvalidArgumentError(std::string(what) + ": " + std::to_string(count) + " elements of " +
                                std::string(DataTypeName(type)) + " overflow the address space");
  }
  if (count > 0 && data == nullptr) {
    return InvalidArgumentError(std::string(what) + ": null buffer for " + std::to_string(count) + " elements");
  }
  return OkStatus();
}

// --- Work ---

struct Work::State {
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool done = false;
  Status status;
  std::vector<std::function<void(const Status&)>> callbacks;
  // Set by OpQueue::Submit before the Work is handed out, never changed after: lets Wait() run the
  // op on its own thread (OpQueue, "The waiter runs the op").
  std::function<void(const Work&)> run_here;
};

Work Work::Done(Status status) {
  Work work = Pending();
  work.Complete(std::move(status));
  return work;
}

Work Work::Pending() { return Work(std::make_shared<State>()); }

Status Work::Wait() const {
  if (state_->run_here) state_->run_here(*this);
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->done; });
  return state_->status;
}

std::optional<Status> Work::WaitFor(std::chrono::milliseconds limit) const {
  std::unique_lock<std::mutex> lock(state_->mu);
  if (!state_->cv.wait_for(lock, limit, [&] { return state_->done; })) return std::nullopt;
  return state_->status;
}

bool Work::done() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->done;
}

void Work::OnComplete(std::function<void(const Status&)> callback) const {
  std::unique_lock<std::mutex> lock(state_->mu);
  if (!state_->done) {
    state_->callbacks.push_back(std::move(callback));
    return;
  }
  Status status = state_->status;
  lock.unlock();
  callback(status);
}

bool Work::Complete(Status status) const {
  std::vector<std::function<void(const Status&)>> callbacks;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->done) return false;
    state_->done = true;
    state_->status = status;
    callbacks.swap(state_->callbacks);
  }
  state_->cv.notify_all();
  for (auto& callback : callbacks) callback(status);
  return true;
}

// --- OpQueue ---

using Clock = std::chrono::steady_clock;

OpQueue::OpQueue(std::function<void(const Status&)> on_abort)
    : on_abort_(std::move(on_abort)), helper_(std::make_shared<Helper>()) {
  helper_->queue = this;
  thread_ = std::thread([this] { Run(); });
  watchdog_ = std::thread([this] { Watchdog(); });
}

OpQueue::~OpQueue() {
  Abort(CancelledError("communicator destroyed"));
  {
    // A waiter running an op has been released by on_abort; wait until it has left the queue.
    std::unique_lock<std::mutex> lock(helper_->mu);
    helper_->queue = nullptr;
    helper_->cv.wait(lock, [&] { return helper_->active == 0; });
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  watch_cv_.notify_all();
  thread_.join();
  watchdog_.join();
}

Work OpQueue::Submit(std::function<Status()> op, std::chrono::milliseconds timeout, std::string name) {
  Work work = Work::Pending();
  work.state_->run_here = [helper = helper_](const Work& waited) {
    {
      std::lock_guard<std::mutex> lock(helper->mu);
      if (helper->queue == nullptr) return;  // being destroyed: its thread and Abort finish the op
      ++helper->active;
    }
    helper->queue->RunHere(waited);
    {
      std::lock_guard<std::mutex> lock(helper->mu);
      --helper->active;
    }
    helper->cv.notify_all();
  };
  Status failure;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure = failure_;
    if (failure.ok()) {
      queue_.push_back(Op{std::move(op), timeout, {}, std::move(name), work});
      wake = !running_;  // otherwise the running op's end wakes the thread
    }
  }
  if (!failure.ok()) {
    work.Complete(failure);  // outside the lock: a callback may submit again
    return work;
  }
  // The queue's thread runs the op unless a waiter claims it first (Work::Wait, usually sooner).
  if (wake) cv_.notify_one();
  return work;
}

bool OpQueue::FailLocked(const Status& reason, std::vector<Work>* failed) {
  if (failure_.ok()) failure_ = reason;
  // The op in flight is not among them: its Work completes when its library call has returned
  // (Execute), since until then the call may still write the caller's buffers.
  for (auto& op : queue_) failed->push_back(op.work);
  queue_.clear();
  if (abort_called_) return false;
  abort_called_ = true;
  return true;
}

void OpQueue::Abort(const Status& reason) {
  std::vector<Work> failed;
  bool call = false;
  Status failure;
  {
    std::lock_guard<std::mutex> lock(mu_);
    call = FailLocked(reason, &failed);
    failure = failure_;
  }
  for (auto& work : failed) work.Complete(failure);
  if (call && on_abort_) on_abort_(failure);
}

Status OpQueue::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void OpQueue::RunHere(const Work& work) {
  std::unique_lock<std::mutex> lock(mu_);
  if (running_ || queue_.empty() || queue_.front().work != work) return;  // not its turn: wait for it
  Execute(lock);
}

void OpQueue::Execute(std::unique_lock<std::mutex>& lock) {
  running_ = std::move(queue_.front());
  queue_.pop_front();
  running_->deadline = Clock::now() + running_->timeout;
  // The watchdog sleeps until watching_until_ and then re-reads the running op's deadline: wake
  // it only for an earlier one (a wake-up per op was half the hand-off cost).
  if (running_->deadline < watching_until_) watch_cv_.notify_one();
  std::function<Status()> run = std::move(running_->run);
  Work work = running_->work;
  lock.unlock();
  Status status = run();
  run = nullptr;  // its captures are released before its Work completes
  lock.lock();
  // A failed op leaves the library's group in an unknown state: the queue breaks before anyone
  // (the queue's thread or a waiter) can take the next op.
  std::vector<Work> failed;
  const bool call =
      !status.ok() && FailLocked(Status(status.code(), running_->name + ": " + status.message()), &failed);
  const Status failure = failure_;
  running_.reset();
  const bool more = !queue_.empty();
  lock.unlock();
  if (more) cv_.notify_one();  // the queue's thread runs the next unless its waiter does
  // An op that returned OK after an abort (or its timeout) still fails with the queue: the group
  // is broken, whatever this rank's buffers hold.
  if (!status.ok() || !failure.ok()) {
    for (auto& failed_work : failed) failed_work.Complete(failure);
    if (call && on_abort_) on_abort_(failure);
    work.Complete(failure);
  } else {
    work.Complete(OkStatus());
  }
  lock.lock();
}

void OpQueue::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && !running_); });
    if (queue_.empty() || running_) return;  // stopping
    Execute(lock);
  }
}

void OpQueue::Watchdog() {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<Work> expired;  // the op this watchdog has aborted, until it has returned
  while (!stopping_) {
    if (!running_ || (expired && running_->work == *expired)) {
      watching_until_ = Clock::time_point::max();
      watch_cv_.wait(lock);
      continue;
    }
    const auto deadline = running_->deadline;
    if (Clock::now() < deadline) {
      watching_until_ = deadline;
      watch_cv_.wait_until(lock, deadline);
      continue;
    }
    expired = running_->work;
    std::string name = running_->name;
    lock.unlock();
    Abort(DeadlineExceededError(name + " did not complete within its timeout on this rank; the group is aborted"));
    lock.lock();
  }
}

}  // namespace troupe::collectives
