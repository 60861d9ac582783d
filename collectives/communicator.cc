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
};

Work Work::Done(Status status) {
  Work work = Pending();
  work.Complete(std::move(status));
  return work;
}

Work Work::Pending() { return Work(std::make_shared<State>()); }

Status Work::Wait() const {
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

OpQueue::OpQueue(std::function<void(const Status&)> on_abort) : on_abort_(std::move(on_abort)) {
  thread_ = std::thread([this] { Run(); });
  watchdog_ = std::thread([this] { Watchdog(); });
}

OpQueue::~OpQueue() {
  Abort(CancelledError("communicator destroyed"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  watchdog_.join();
}

Work OpQueue::Submit(std::function<Status()> op, std::chrono::milliseconds timeout, std::string name) {
  Work work = Work::Pending();
  Status failure;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure = failure_;
    if (failure.ok()) queue_.push_back(Op{std::move(op), timeout, {}, std::move(name), work});
  }
  if (!failure.ok()) {
    work.Complete(failure);  // outside the lock: a callback may submit again
    return work;
  }
  cv_.notify_all();
  return work;
}

void OpQueue::Abort(const Status& reason) {
  std::vector<Work> failed;
  bool call = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.ok()) failure_ = reason;
    if (running_) failed.push_back(running_->work);
    for (auto& op : queue_) failed.push_back(op.work);
    queue_.clear();
    if (!abort_called_) {
      abort_called_ = true;
      call = true;
    }
  }
  cv_.notify_all();
  Status failure = health();
  for (auto& work : failed) work.Complete(failure);
  if (call && on_abort_) on_abort_(failure);
}

Status OpQueue::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void OpQueue::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping
    running_ = std::move(queue_.front());
    queue_.pop_front();
    running_->deadline = std::chrono::steady_clock::now() + running_->timeout;
    cv_.notify_all();  // the watchdog watches the new deadline
    auto run = running_->run;
    Work work = running_->work;
    std::string name = running_->name;
    lock.unlock();
    Status status = run();
    lock.lock();
    running_.reset();
    cv_.notify_all();
    if (!status.ok()) {
      lock.unlock();
      // A failed op leaves the library's group in an unknown state: break the queue.
      Abort(Status(status.code(), name + ": " + status.message()));
      work.Complete(health());
      lock.lock();
      continue;
    }
    lock.unlock();
    work.Complete(OkStatus());
    lock.lock();
  }
}

void OpQueue::Watchdog() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (!running_) {
      cv_.wait(lock);
      continue;
    }
    auto deadline = running_->deadline;
    Work work = running_->work;
    if (cv_.wait_until(lock, deadline, [&] { return stopping_ || !running_ || running_->work != work; })) {
      continue;
    }
    std::string name = running_->name;
    lock.unlock();
    Abort(DeadlineExceededError(name + " did not complete within its timeout on this rank; the group is aborted"));
    lock.lock();
  }
}

}  // namespace troupe::collectives
