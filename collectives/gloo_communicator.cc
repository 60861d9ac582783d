#include "collectives/gloo_communicator.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/address.h>
#include <gloo/transport/context.h>
#include <gloo/transport/device.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>
#include <gloo/transport/tcp/device.h>

#include <dlfcn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

namespace troupe::collectives {
namespace {

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

// --- float16 / bfloat16: reduced in float32, rounded to nearest even ---

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan (nan stays a quiet nan)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  const int32_t exponent = static_cast<int32_t>(abs >> 23) - 127;
  if (exponent >= -14) {  // normal half
    uint32_t mantissa = abs & 0x7fffffu;
    uint32_t half = (static_cast<uint32_t>(exponent + 15) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // carries into the exponent
    return static_cast<uint16_t>(sign | half);
  }
  if (exponent < -25) return sign;  // below half the smallest subnormal: +-0
  // Subnormal half: value = m * 2^-24, m = (1.mantissa) * 2^(exponent + 24).
  const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
  const int shift = -exponent - 1;  // 14..24: bits dropped from the 24-bit significand
  uint32_t half = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float BFloatToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToBFloat(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet nan
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

struct Sum {
  float operator()(float a, float b) const { return a + b; }
};
struct Min {
  float operator()(float a, float b) const { return std::fmin(a, b); }
};
struct Max {
  float operator()(float a, float b) const { return std::fmax(a, b); }
};

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float), typename Op>
void ReduceHalf(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<uint16_t*>(c);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = FromFloat(Op()(ToFloat(x[i]), ToFloat(y[i])));
}

template <typename T>
ReduceFn GlooReduce(ReduceOp op) {
  // gloo::sum etc. are overloaded (a 3-argument in-place form too): pick the 4-argument one.
  switch (op) {
    case ReduceOp::kSum: return static_cast<ReduceFn>(&gloo::sum<T>);
    case ReduceOp::kMin: return static_cast<ReduceFn>(&gloo::min<T>);
    case ReduceOp::kMax: return static_cast<ReduceFn>(&gloo::max<T>);
  }
  return nullptr;
}

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
ReduceFn HalfReduce(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return &ReduceHalf<ToFloat, FromFloat, Sum>;
    case ReduceOp::kMin: return &ReduceHalf<ToFloat, FromFloat, Min>;
    case ReduceOp::kMax: return &ReduceHalf<ToFloat, FromFloat, Max>;
  }
  return nullptr;
}

ReduceFn ReduceFunction(DataType type, ReduceOp op) {
  switch (type) {
    case DataType::kFloat32: return GlooReduce<float>(op);
    case DataType::kFloat64: return GlooReduce<double>(op);
    case DataType::kInt32: return GlooReduce<int32_t>(op);
    case DataType::kInt64: return GlooReduce<int64_t>(op);
    case DataType::kFloat16: return HalfReduce<&HalfToFloat, &FloatToHalf>(op);
    case DataType::kBFloat16: return HalfReduce<&BFloatToFloat, &FloatToBFloat>(op);
  }
  return nullptr;
}

Status CheckOp(ReduceOp op, std::string_view what) {
  if (op == ReduceOp::kSum || op == ReduceOp::kMin || op == ReduceOp::kMax) return OkStatus();
  return InvalidArgumentError(std::string(what) + ": unknown reduce op " + std::to_string(static_cast<int>(op)));
}

// Gloo's element size only matters for the buffer sizes it checks; the reduction function
// knows the real type. An unsigned type of the same width keeps the template count small.
template <size_t kSize>
struct Element;
template <>
struct Element<2> { using type = uint16_t; };
template <>
struct Element<4> { using type = uint32_t; };
template <>
struct Element<8> { using type = uint64_t; };

template <typename T>
void GlooAllreduce(const std::shared_ptr<gloo::Context>& context, void* data, size_t count, ReduceFn reduce,
                   std::chrono::milliseconds timeout, uint32_t tag) {
  gloo::AllreduceOptions options(context);
  options.setOutput(static_cast<T*>(data), count);
  options.setReduceFunction(reduce);
  options.setTag(tag);
  options.setTimeout(timeout);
  gloo::allreduce(options);
}

// The slot prefix of RunReduceScatter's transfers: beside Gloo's own (types.h uses 0x01-0x08), so
// they never match another collective's.
constexpr uint8_t kReduceScatterSlotPrefix = 0x40;

// Gloo's own timeout is a backstop behind the OpQueue's: the queue fails the op with
// DeadlineExceeded at its deadline and aborts the context; Gloo's would say Unavailable.
constexpr std::chrono::milliseconds kGlooTimeoutSlack{5000};

// Gloo's way to fail a whole TCP context at once is tcp::Context::signalException(message): it
// fails every pair (waking every buffer waiting on it, with IoException(message)) and closes
// their sockets, so the peers' pending ops fail too; Gloo calls it itself when an op times out.
// It is protected, and Debian's libgloo-dev cannot even include gloo/transport/tcp/context.h (it
// lacks gloo/common/memory.h), so it is looked up by its exported symbol. A non-virtual member
// function with a void result is called as a function whose first argument is `this` (Itanium
// C++ ABI); tcp::Context's first base, transport::Context, is polymorphic, so it sits at offset 0
// and the transport::Context pointer is the tcp::Context pointer.
using SignalContextFn = void (*)(void* tcp_context, const std::string& message);

SignalContextFn FindSignalContext() {
  static const SignalContextFn fn = reinterpret_cast<SignalContextFn>(dlsym(
      RTLD_DEFAULT,
      "_ZN4gloo9transport3tcp7Context15signalExceptionERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"));
  return fn;
}

// Makes a TCP device's event loop go round about every kTickPeriod while ticking. A pair's
// connect returns only after the loop's next round (Loop::unregisterDescriptor waits for it, so
// that the pair's retired listening socket sees no more events), and an idle loop goes round
// when its epoll_wait times out, every 10 ms: each pair of a mesh waited that long to connect.
// The ticker registers an eventfd with the device's loop (tcp::Device::registerDescriptor, public)
// and writes it from a thread of its own until Stop(). It stays registered until destroyed
// (unregistering waits for a round of the loop, up to 10 ms): destroy it before the device.
class LoopTicker final : public gloo::transport::tcp::Handler {
 public:
  static constexpr std::chrono::microseconds kTickPeriod{500};

  explicit LoopTicker(gloo::transport::Device* device)
      : device_(dynamic_cast<gloo::transport::tcp::Device*>(device)) {
    if (device_ == nullptr) return;  // another transport: no loop to tick
    fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd_ < 0) return;
    try {
      device_->registerDescriptor(fd_, EPOLLIN, this);
    } catch (const std::exception&) {
      return;  // connects wait for the loop's own rounds, as without the ticker
    }
    registered_ = true;
    try {
      thread_ = std::thread([this] {
        std::unique_lock<std::mutex> lock(mu_);
        while (!done_) {
          const uint64_t one = 1;
          [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof(one));
          cv_.wait_for(lock, kTickPeriod, [this] { return done_; });
        }
      });
    } catch (const std::system_error&) {
    }
  }

  /// Stops ticking (the loop goes back to its own rounds).
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  ~LoopTicker() override {
    Stop();
    if (registered_) {
      try {
        device_->unregisterDescriptor(fd_, this);
      } catch (const std::exception&) {
      }
    }
    // Gloo calls handleEvents no more once unregisterDescriptor has returned, but its loop's
    // synchronization is inside libgloo, which ThreadSanitizer does not see: the last read and
    // this close are ordered through fd_mu_ as well.
    std::lock_guard<std::mutex> lock(fd_mu_);
    if (fd_ >= 0) close(fd_);
  }

  void handleEvents(int /*events*/) override {
    std::lock_guard<std::mutex> lock(fd_mu_);
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = read(fd_, &count, sizeof(count));
  }

 private:
  gloo::transport::tcp::Device* device_;
  int fd_ = -1;
  bool registered_ = false;
  std::mutex fd_mu_;  // orders the loop's reads of fd_ before its close (see the destructor)
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

class GlooCommunicator::Context : public gloo::rendezvous::Context {
 public:
  /// Threads connecting one rank's pairs at once (ConnectPairs); beyond it pairs wait their turn.
  static constexpr size_t kConnectThreads = 32;

  using gloo::rendezvous::Context::Context;

  /// Fails every pair with `message` (Gloo's IoException in the op in flight and in every later
  /// op). Safe from any thread, concurrently with an op; idempotent per pair.
  /// Without the symbol (another Gloo build) it falls back to closing the connections: the peers
  /// still fail at once, this rank's op thread only at Gloo's own timeout (its Work fails at once).
  void FailAllPairs(const std::string& message) {
    if (transportContext_ == nullptr) return;
    if (SignalContextFn signal = FindSignalContext()) {
      signal(transportContext_.get(), message);
    } else {
      closeConnections();
    }
  }

  /// Connects every pair of `transport` to its peer's address (`remote`, by peer; this rank's
  /// empty) at once, on up to kConnectThreads threads: a TCP pair's connect waits for a tick of
  /// the device's event loop (an idle one ticks every 10 ms: Gloo's epoll_wait timeout) before it
  /// returns, so connecting the peers in turn, as Gloo does, took up to 10 ms a peer, and a rank
  /// whose pair waits for a peer still busy with its earlier pairs waited for those too. The first
  /// pair that fails fails every other (signalException), so none waits out the timeout after it;
  /// its exception is rethrown.
  void ConnectPairs(gloo::transport::Context& transport, const std::vector<std::vector<char>>& remote) {
    std::vector<int> peers;
    for (int peer = 0; peer < size; ++peer) {
      if (peer != rank) peers.push_back(peer);
    }
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::exception_ptr first;
    auto connect = [&] {
      for (size_t i = next++; i < peers.size(); i = next++) {
        try {
          transport.getPair(peers[i])->connect(remote[peers[i]]);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu);
          if (first) continue;
          first = std::current_exception();
          if (SignalContextFn signal = FindSignalContext()) {
            signal(&transport, "rank " + std::to_string(rank) + " could not connect to rank " +
                                   std::to_string(peers[i]) + ": " + e.what());
          }
        }
      }
    };
    std::vector<std::thread> threads;
    const size_t helpers = std::min(peers.size(), kConnectThreads) - (peers.empty() ? 0 : 1);
    for (size_t t = 0; t < helpers; ++t) {
      try {
        threads.emplace_back(connect);
      } catch (const std::system_error&) {
        break;  // no thread to be had: fewer at once (this one connects what is left)
      }
    }
    connect();
    for (auto& thread : threads) thread.join();
    if (first) std::rethrow_exception(first);
  }

  /// Forms the full mesh as gloo::rendezvous::Context::connectFullMesh does, with the same keys
  /// (this rank's number -> the addresses of its pairs, in peer order), in two store calls instead
  /// of a wait and a get for each peer in turn (and Gloo's host-name key and its gets, which this
  /// Gloo uses only for a local rank troupe does not read): a set of this rank's key, then one
  /// wait for every peer's key, which GlooRendezvousStore answers with the values (one round trip
  /// to the store actor), so the gets that follow are local. Then every pair connects at once
  /// (ConnectPairs) while a LoopTicker keeps the device's loop going round. `abort` (optional)
  /// fails the connects at once (and the formation after the store's wait). Throws as Gloo does
  /// (IoException: a store error, or a peer that does not come within the context's timeout).
  void ConnectFullMesh(gloo::rendezvous::Store& store, std::shared_ptr<gloo::transport::Device>& device,
                       AbortSignal* abort) {
    auto transport = device->createContext(rank, size);
    transport->setTimeout(getTimeout());
    std::vector<char> addresses;
    std::vector<std::string> peers;
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      auto& pair = transport->createPair(peer);
      const std::vector<char> bytes = pair->address().bytes();
      addresses.insert(addresses.end(), bytes.begin(), bytes.end());
      peers.push_back(std::to_string(peer));
    }
    store.set(std::to_string(rank), addresses);
    if (!peers.empty()) store.wait(peers, getTimeout());
    if (abort != nullptr && abort->aborted()) throw gloo::IoException("aborted while waiting for the peers' addresses");
    std::vector<std::vector<char>> remote(size);  // by peer: its pair's address for this rank
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      std::vector<char> all = store.get(std::to_string(peer));
      remote[peer] = extractAddress(all, peer);
    }
    ticker_ = std::make_unique<LoopTicker>(device.get());
    {
      // An abort fails every pair as the first failed connect does: every connect returns at once.
      AbortSignal::Registration aborts;
      if (abort) {
        aborts = abort->OnAbort([this, context = transport.get()](const Status& reason) {
          if (SignalContextFn signal = FindSignalContext()) {
            signal(context, "rank " + std::to_string(rank) + "'s formation was aborted: " + reason.message());
          }
        });
      }
      ConnectPairs(*transport, remote);
    }
    ticker_->Stop();
    device_ = device;
    transportContext_ = std::move(transport);
  }

 private:
  // Registered with the device's loop while this context lives; destroyed first (before the
  // base's device and pairs).
  std::unique_ptr<LoopTicker> ticker_;
};

StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(
    int rank, int world_size, std::shared_ptr<gloo::rendezvous::Store> store, GlooOptions options) {
  const std::string where = "GlooCommunicator::Create(rank " + std::to_string(rank) + " of " +
                            std::to_string(world_size) + ")";
  if (world_size < 1) return InvalidArgumentError(where + ": world size must be at least 1");
  if (rank < 0 || rank >= world_size) {
    return InvalidArgumentError(where + ": rank must be in [0, " + std::to_string(world_size) + ")");
  }
  if (store == nullptr) return InvalidArgumentError(where + ": null rendezvous store");
  if (options.connect_timeout.count() <= 0) {
    return InvalidArgumentError(where + ": connect_timeout must be positive");
  }
  if (options.hostname.empty() && options.interface.empty()) {
    return InvalidArgumentError(where + ": give a hostname or an interface for Gloo's TCP device");
  }
  gloo::transport::tcp::attr attr;
  if (!options.interface.empty()) {
    attr.iface = options.interface;
  } else {
    attr.hostname = options.hostname;
  }
  const std::string bind = options.interface.empty() ? "host " + options.hostname : "interface " + options.interface;
  std::shared_ptr<gloo::transport::Device> device;
  try {
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return UnavailableError(where + ": Gloo's TCP device could not bind " + bind + ": " + e.what() +
                            " (check GlooOptions.hostname / interface)");
  } catch (...) {
    return UnavailableError(where + ": Gloo's TCP device could not bind " + bind);
  }
  // A formation aborted (a stop, a lost peer) fails with the abort's reason, not Gloo's message.
  auto aborted = [&]() -> std::optional<Status> {
    if (!options.abort || !options.abort->aborted()) return std::nullopt;
    const Status reason = options.abort->reason();
    return Status(reason.code(), where + ": formation aborted: " + reason.message());
  };
  if (auto status = aborted()) return *status;
  auto context = std::make_shared<Context>(rank, world_size);
  context->setTimeout(options.connect_timeout);
  try {
    context->ConnectFullMesh(*store, device, options.abort.get());
  } catch (const std::exception& e) {
    if (auto status = aborted()) return *status;
    return UnavailableError(where + ": connecting the group failed within " +
                            std::to_string(options.connect_timeout.count()) + " ms (" + e.what() +
                            "); every rank must call Create with the same store and world size");
  } catch (...) {
    if (auto status = aborted()) return *status;
    return UnavailableError(where + ": connecting the group failed");
  }
  return std::unique_ptr<GlooCommunicator>(
      new GlooCommunicator(rank, world_size, std::move(device), std::move(context)));
}

GlooCommunicator::GlooCommunicator(int rank, int world_size, std::shared_ptr<gloo::transport::Device> device,
                                   std::shared_ptr<Context> context)
    : rank_(rank),
      world_size_(world_size),
      device_(std::move(device)),
      context_(std::move(context)),
      queue_([this](const Status& reason) {
        context_->FailAllPairs("troupe aborted the Gloo group at rank " + std::to_string(rank_) + ": " +
                               reason.message());
      }) {}

GlooCommunicator::~GlooCommunicator() = default;  // queue_ first: aborts, fails the pairs, joins

Status GlooCommunicator::Guard(const std::string& what, const std::function<void()>& call) {
  const std::string where = "gloo " + what + " (rank " + std::to_string(rank_) + " of " +
                            std::to_string(world_size_) + ")";
  try {
    call();
    return OkStatus();
  } catch (const gloo::IoException& e) {
    return UnavailableError(where + ": connection to a peer failed: " + e.what());
  } catch (const gloo::Exception& e) {
    return InternalError(where + ": " + e.what());
  } catch (const std::exception& e) {  // gloo::EnforceNotMet and the like
    return InternalError(where + ": " + e.what());
  } catch (...) {
    return InternalError(where + ": unknown exception");
  }
}

void GlooCommunicator::RunAllReduce(void* data, size_t count, DataType type, ReduceOp op,
                                    std::chrono::milliseconds timeout) {
  const ReduceFn reduce = ReduceFunction(type, op);
  const uint32_t tag = NextTag();
  switch (SizeOf(type)) {
    case 2: GlooAllreduce<Element<2>::type>(context_, data, count, reduce, timeout, tag); break;
    case 4: GlooAllreduce<Element<4>::type>(context_, data, count, reduce, timeout, tag); break;
    case 8: GlooAllreduce<Element<8>::type>(context_, data, count, reduce, timeout, tag); break;
    default: throw std::logic_error("no element type of size " + std::to_string(SizeOf(type)));
  }
}

// A ring reduce-scatter over Gloo's unbound buffers (this Gloo has no reduce-scatter function):
// n-1 steps; at step s this rank sends its partial block (rank - s - 1) mod n to the right and
// receives the left's partial block (rank - s - 2) mod n, which it reduces into its own copy. After
// the last step block `rank` holds every rank's contribution. Each rank sends and receives
// (n-1)/n of `send`, as NCCL's ring does. Scratch: n + 1 blocks (the working copy, a landing block).
void GlooCommunicator::RunReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                                        std::chrono::milliseconds timeout) {
  const size_t block = count * SizeOf(type);
  const int n = world_size_;
  if (n == 1) {
    std::memcpy(recv, send, block);
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  scratch_.resize(block * (n + 1));
  uint8_t* work = scratch_.data();
  uint8_t* landing = work + block * n;
  std::memcpy(work, send, block * n);
  auto work_buffer = context_->createUnboundBuffer(work, block * n);
  auto landing_buffer = context_->createUnboundBuffer(landing, block);
  const ReduceFn reduce = ReduceFunction(type, op);
  const uint64_t slot = gloo::Slot::build(kReduceScatterSlotPrefix, NextTag());
  const int right = (rank_ + 1) % n;
  const int left = (rank_ + n - 1) % n;
  for (int step = 0; step < n - 1; ++step) {
    const size_t send_block = static_cast<size_t>(((rank_ - step - 1) % n + n) % n);
    const size_t recv_block = static_cast<size_t>(((rank_ - step - 2) % n + n) % n);
    landing_buffer->recv(left, slot, 0, block);
    work_buffer->send(right, slot, send_block * block, block);
    if (!landing_buffer->waitRecv(deadline) || !work_buffer->waitSend(deadline)) {
      throw std::runtime_error("reduce-scatter step " + std::to_string(step) + " was aborted");
    }
    uint8_t* into = work + recv_block * block;
    reduce(into, into, landing, count);
  }
  std::memcpy(recv, work + static_cast<size_t>(rank_) * block, block);
}

Work GlooCommunicator::AllReduce(void* data, size_t count, DataType type, ReduceOp op,
                                 std::chrono::milliseconds timeout) {
  Status check = CheckBuffer(data, count, type, "GlooCommunicator::AllReduce data");
  if (check.ok()) check = CheckOp(op, "GlooCommunicator::AllReduce");
  if (!check.ok()) return Work::Done(check);
  std::string name = "allreduce(" + std::to_string(count) + " x " + std::string(DataTypeName(type)) + ", " +
                     std::string(ReduceOpName(op)) + ")";
  return queue_.Submit(
      [this, data, count, type, op, timeout, name] {
        if (count == 0) return OkStatus();
        return Guard(name, [&] { RunAllReduce(data, count, type, op, timeout + kGlooTimeoutSlack); });
      },
      timeout, name);
}

Work GlooCommunicator::Broadcast(void* data, size_t count, DataType type, int root,
                                 std::chrono::milliseconds timeout) {
  Status check = CheckBuffer(data, count, type, "GlooCommunicator::Broadcast data");
  if (check.ok() && (root < 0 || root >= world_size_)) {
    check = InvalidArgumentError("GlooCommunicator::Broadcast: root " + std::to_string(root) + " is not in [0, " +
                                 std::to_string(world_size_) + ")");
  }
  if (!check.ok()) return Work::Done(check);
  std::string name = "broadcast(" + std::to_string(count) + " x " + std::string(DataTypeName(type)) +
                     ", root " + std::to_string(root) + ")";
  return queue_.Submit(
      [this, data, count, type, root, timeout, name] {
        if (count == 0) return OkStatus();
        return Guard(name, [&] {
          gloo::BroadcastOptions options(context_);
          options.setOutput(static_cast<uint8_t*>(data), count * SizeOf(type));
          options.setRoot(root);
          options.setTag(NextTag());
          options.setTimeout(timeout + kGlooTimeoutSlack);
          gloo::broadcast(options);
        });
      },
      timeout, name);
}

Work GlooCommunicator::AllGather(const void* send, void* recv, size_t count, DataType type,
                                 std::chrono::milliseconds timeout) {
  Status check = CheckBuffer(send, count, type, "GlooCommunicator::AllGather send");
  if (check.ok()) check = CheckBuffer(recv, count, type, "GlooCommunicator::AllGather recv");
  const size_t bytes = check.ok() ? count * SizeOf(type) : 0;
  if (check.ok() && bytes > 0 && bytes > SIZE_MAX / static_cast<size_t>(world_size_)) {
    check = InvalidArgumentError("GlooCommunicator::AllGather: recv of world size x " + std::to_string(count) +
                                 " elements overflows the address space");
  }
  if (check.ok() && bytes > 0) {
    const auto* s = static_cast<const uint8_t*>(send);
    const auto* r = static_cast<const uint8_t*>(recv);
    if (s < r + bytes * world_size_ && r < s + bytes) {
      check = InvalidArgumentError("GlooCommunicator::AllGather: send and recv overlap");
    }
  }
  if (!check.ok()) return Work::Done(check);
  std::string name = "allgather(" + std::to_string(count) + " x " + std::string(DataTypeName(type)) + ")";
  return queue_.Submit(
      [this, send, recv, bytes, timeout, name] {
        if (bytes == 0) return OkStatus();
        return Guard(name, [&] {
          gloo::AllgatherOptions options(context_);
          // Gloo's input pointer is not const, but allgather only reads it.
          options.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(send)), bytes);
          options.setOutput(static_cast<uint8_t*>(recv), bytes * world_size_);
          options.setTag(NextTag());
          options.setTimeout(timeout + kGlooTimeoutSlack);
          gloo::allgather(options);
        });
      },
      timeout, name);
}

Work GlooCommunicator::ReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                                     std::chrono::milliseconds timeout) {
  Status check = CheckBuffer(recv, count, type, "GlooCommunicator::ReduceScatter recv");
  if (check.ok() && count > SIZE_MAX / static_cast<size_t>(world_size_)) {
    check = InvalidArgumentError("GlooCommunicator::ReduceScatter: send of world size x " + std::to_string(count) +
                                 " elements overflows the address space");
  }
  if (check.ok()) check = CheckBuffer(send, count * world_size_, type, "GlooCommunicator::ReduceScatter send");
  if (check.ok()) check = CheckOp(op, "GlooCommunicator::ReduceScatter");
  if (!check.ok()) return Work::Done(check);
  std::string name = "reducescatter(" + std::to_string(count) + " x " + std::string(DataTypeName(type)) + ", " +
                     std::string(ReduceOpName(op)) + ")";
  return queue_.Submit(
      [this, send, recv, count, type, op, timeout, name] {
        if (count == 0) return OkStatus();
        return Guard(name, [&] { RunReduceScatter(send, recv, count, type, op, timeout + kGlooTimeoutSlack); });
      },
      timeout, name);
}

Work GlooCommunicator::Barrier(std::chrono::milliseconds timeout) {
  return queue_.Submit(
      [this, timeout] {
        return Guard("barrier", [&] {
          gloo::BarrierOptions options(context_);
          options.setTag(NextTag());
          options.setTimeout(timeout + kGlooTimeoutSlack);
          gloo::barrier(options);
        });
      },
      timeout, "barrier");
}

void GlooCommunicator::Abort(const Status& reason) { queue_.Abort(reason); }

Status GlooCommunicator::health() const { return queue_.health(); }

}  // namespace troupe::collectives
