// On a GPU (label gpu): NcclCommunicator against a host reference for every op, dtype and reduce
// op, world size 1 on one GPU and 2-4 ranks (one per GPU) where that many GPUs exist, over the
// matrix gloo_communicator_test runs too (conformance_matrix.h: 0 elements to 64 MiB); an
// initialisation whose second rank never joins ends through Abort() or its timeout instead of
// hanging; ops after Abort fail with its status; bad arguments are InvalidArgument. Skipped, with
// the reason, where there is no GPU (or too few GPUs for a multi-rank case: NCCL refuses two ranks
// of one group on one GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "collectives/nccl_communicator.h"
#include "tests/collectives/conformance_matrix.h"

namespace troupe::testing {
namespace {

using collectives::DataType;
using collectives::NcclCommunicator;
using collectives::NcclOptions;
using collectives::ReduceOp;
using collectives::Work;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

using collectives::conformance::kOps;
using collectives::conformance::kTypes;
// Bounds for waits on work that must finish: generous for a 64 MiB op on a cold GPU.
constexpr milliseconds kOpBound{60000};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// The GPU count, or the reason to skip.
#define TROUPE_GPUS_OR_SKIP(var)                                                                        \
  auto var##_or = NcclCommunicator::DeviceCount();                                                      \
  if (!var##_or.ok()) GTEST_SKIP() << "no GPU here (" << var##_or.status().message() << "); runs on a GPU machine"; \
  const int var = *var##_or;                                                                          \
  (void)var

// --- host values: small integers, exact in every dtype (bfloat16 holds integers up to 256) ---

uint16_t ToHalf(float f) {  // exact for the small integers used here
  if (f == 0) return 0;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000;
  int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = (bits >> 13) & 0x3ff;
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | mantissa);
}
float FromHalf(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  if (exponent == 0 && mantissa == 0) {
    float z;
    std::memcpy(&z, &sign, 4);
    return z;
  }
  if (exponent == 0 || exponent == 31) return std::nanf("");  // not produced by these tests
  uint32_t bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<char> Encode(const std::vector<double>& values, DataType type) {
  const size_t size = collectives::SizeOf(type);
  std::vector<char> out(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) {
    char* p = out.data() + i * size;
    const double v = values[i];
    switch (type) {
      case DataType::kFloat32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
      case DataType::kFloat16: { uint16_t h = ToHalf(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      case DataType::kBFloat16: {
        float f = static_cast<float>(v);
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        uint16_t b = static_cast<uint16_t>(bits >> 16);
        std::memcpy(p, &b, 2);
        break;
      }
      case DataType::kFloat64: std::memcpy(p, &v, 8); break;
      case DataType::kInt32: { int32_t x = static_cast<int32_t>(v); std::memcpy(p, &x, 4); break; }
      case DataType::kInt64: { int64_t x = static_cast<int64_t>(v); std::memcpy(p, &x, 8); break; }
    }
  }
  return out;
}

double Decode(const char* p, DataType type) {
  switch (type) {
    case DataType::kFloat32: { float f; std::memcpy(&f, p, 4); return f; }
    case DataType::kFloat16: { uint16_t h; std::memcpy(&h, p, 2); return FromHalf(h); }
    case DataType::kBFloat16: {
      uint16_t b;
      std::memcpy(&b, p, 2);
      uint32_t bits = static_cast<uint32_t>(b) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DataType::kFloat64: { double d; std::memcpy(&d, p, 8); return d; }
    case DataType::kInt32: { int32_t x; std::memcpy(&x, p, 4); return x; }
    case DataType::kInt64: { int64_t x; std::memcpy(&x, p, 8); return static_cast<double>(x); }
  }
  return 0;
}

// Rank r's input element i: in [-8, 8], so a sum over 4 ranks stays within [-32, 32].
double Input(int rank, size_t i) { return static_cast<double>(static_cast<int>((rank * 5 + i * 3) % 17) - 8); }
// What a buffer holds before an op writes it: never a result of these inputs.
constexpr double kSentinel = 77;

double Reduce(ReduceOp op, double a, double b) {
  switch (op) {
    case ReduceOp::kSum: return a + b;
    case ReduceOp::kMin: return std::min(a, b);
    case ReduceOp::kMax: return std::max(a, b);
  }
  return 0;
}

// Compares a device buffer with `expected`; returns "" or a description of the first mismatches.
std::string Mismatch(const void* device_buffer, const std::vector<double>& expected, DataType type) {
  std::vector<char> host(expected.size() * collectives::SizeOf(type));
  if (!host.empty()) {
    cudaError_t e = cudaMemcpy(host.data(), device_buffer, host.size(), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return std::string("cudaMemcpy back failed: ") + cudaGetErrorString(e);
  }
  std::string out;
  size_t bad = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    double got = Decode(host.data() + i * collectives::SizeOf(type), type);
    if (got != expected[i]) {
      if (++bad <= 3) out += " [" + std::to_string(i) + "] got " + std::to_string(got) + " want " + std::to_string(expected[i]);
    }
  }
  if (bad > 0) out = std::to_string(bad) + " of " + std::to_string(expected.size()) + " elements differ:" + out;
  return out;
}

// Device memory on one GPU, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : device_(device) {
    cudaSetDevice(device);
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) {
      cudaSetDevice(device_);
      cudaFree(ptr_);
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  bool Fill(const std::vector<double>& values, DataType type) {
    auto bytes = Encode(values, type);
    cudaSetDevice(device_);
    return bytes.empty() || cudaMemcpy(ptr_, bytes.data(), bytes.size(), cudaMemcpyHostToDevice) == cudaSuccess;
  }

 private:
  int device_;
  void* ptr_ = nullptr;
};

// A group of `n` ranks, rank r on GPU r, initialised; empty with a failure recorded if not.
std::vector<std::unique_ptr<NcclCommunicator>> MakeGroup(int n) {
  std::vector<std::unique_ptr<NcclCommunicator>> group;
  auto id = NcclCommunicator::NewUniqueId();
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return {};
  EXPECT_EQ(id->size(), size_t{NCCL_UNIQUE_ID_BYTES});
  auto start = Clock::now();
  for (int r = 0; r < n; ++r) {
    NcclOptions options;
    options.rank = r;
    options.world_size = n;
    options.device = r;
    options.unique_id = *id;  // as bytes, as the job supervisor hands it on
    options.init_timeout = milliseconds(60000);
    auto comm = NcclCommunicator::Create(options);  // non-blocking: all ranks start before any waits
    EXPECT_TRUE(comm.ok()) << comm.status();
    if (!comm.ok()) return {};
    group.push_back(std::move(*comm));
  }
  for (auto& comm : group) {
    auto status = comm->ready().WaitFor(kOpBound);
    EXPECT_TRUE(status.has_value()) << "rank " << comm->rank() << " not initialised within " << kOpBound.count() << " ms";
    if (!status) return {};
    EXPECT_TRUE(status->ok()) << "rank " << comm->rank() << ": " << *status;
    if (!status->ok()) return {};
  }
  std::printf("world size %d initialised in %.1f ms\n", n, Ms(Clock::now() - start));
  return group;
}

// Waits for every rank's work; records a failure naming `what` if one fails or hangs.
void WaitAll(const std::vector<Work>& works, const std::string& what) {
  for (size_t r = 0; r < works.size(); ++r) {
    auto status = works[r].WaitFor(kOpBound);
    ASSERT_TRUE(status.has_value()) << what << ": rank " << r << " did not complete within " << kOpBound.count() << " ms";
    EXPECT_TRUE(status->ok()) << what << ": rank " << r << ": " << *status;
  }
}

// How CheckEveryOp sizes allgather and reduce-scatter from a count.
enum class Sizing {
  kPerRank,        // count elements from each rank (world size x count in all)
  kLargestBuffer,  // count elements in all, as nccl-tests size them: count / world size a rank
};
// Which ops CheckEveryOp runs.
enum class Ops { kEvery, kAllReduceSumOnly };

// Every op x dtype x reduce op x count on `group` (one rank per GPU), checked against the host:
// allreduce and broadcast at count elements a rank, allgather and reduce-scatter as `sizing` says.
void CheckEveryOp(const std::vector<std::unique_ptr<NcclCommunicator>>& group, const std::vector<size_t>& counts,
                  const std::vector<DataType>& types, Sizing sizing = Sizing::kPerRank, Ops which = Ops::kEvery) {
  const int n = static_cast<int>(group.size());
  for (DataType type : types) {
    for (size_t count : counts) {
      const size_t block = sizing == Sizing::kPerRank ? count : count / static_cast<size_t>(n);
      const std::string shape = std::to_string(n) + " ranks, " + std::to_string(count) + " " +
                                std::string(collectives::DataTypeName(type));
      const size_t size = collectives::SizeOf(type);
      std::vector<std::vector<double>> in(n, std::vector<double>(count));
      for (int r = 0; r < n; ++r)
        for (size_t i = 0; i < count; ++i) in[r][i] = Input(r, i);
      // AllReduce and ReduceScatter, every reduce op.
      for (ReduceOp op : kOps) {
        if (which == Ops::kAllReduceSumOnly && op != ReduceOp::kSum) continue;
        std::vector<double> reduced(count);
        for (size_t i = 0; i < count; ++i) {
          reduced[i] = in[0][i];
          for (int r = 1; r < n; ++r) reduced[i] = Reduce(op, reduced[i], in[r][i]);
        }
        std::vector<std::unique_ptr<DeviceBuffer>> bufs;
        std::vector<Work> works;
        for (int r = 0; r < n; ++r) {
          bufs.push_back(std::make_unique<DeviceBuffer>(r, count * size));
          ASSERT_TRUE(count == 0 || bufs.back()->get() != nullptr) << "cudaMalloc failed: " << shape;
          ASSERT_TRUE(bufs.back()->Fill(in[r], type));
        }
        for (int r = 0; r < n; ++r) works.push_back(group[r]->AllReduce(bufs[r]->get(), count, type, op));
        const std::string what = "AllReduce " + std::string(collectives::ReduceOpName(op)) + " (" + shape + ")";
        WaitAll(works, what);
        for (int r = 0; r < n; ++r) {
          cudaSetDevice(r);
          EXPECT_EQ(Mismatch(bufs[r]->get(), reduced, type), "") << what << ", rank " << r;
        }
        if (which == Ops::kAllReduceSumOnly) continue;
        // ReduceScatter: each rank sends n blocks of `block`; rank r gets block r reduced.
        std::vector<std::unique_ptr<DeviceBuffer>> sends, recvs;
        std::vector<std::vector<double>> send_values(n, std::vector<double>(block * n));
        for (int r = 0; r < n; ++r)
          for (size_t i = 0; i < block * n; ++i) send_values[r][i] = Input(r, i);
        works.clear();
        for (int r = 0; r < n; ++r) {
          sends.push_back(std::make_unique<DeviceBuffer>(r, block * n * size));
          recvs.push_back(std::make_unique<DeviceBuffer>(r, block * size));
          ASSERT_TRUE(sends.back()->Fill(send_values[r], type));
          ASSERT_TRUE(recvs.back()->Fill(std::vector<double>(block, kSentinel), type));
        }
        for (int r = 0; r < n; ++r)
          works.push_back(group[r]->ReduceScatter(sends[r]->get(), recvs[r]->get(), block, type, op));
        const std::string rs_what = "ReduceScatter " + std::string(collectives::ReduceOpName(op)) + " (" + shape + ")";
        WaitAll(works, rs_what);
        for (int r = 0; r < n; ++r) {
          std::vector<double> want(block);
          for (size_t i = 0; i < block; ++i) {
            const size_t at = r * block + i;
            want[i] = send_values[0][at];
            for (int q = 1; q < n; ++q) want[i] = Reduce(op, want[i], send_values[q][at]);
          }
          cudaSetDevice(r);
          EXPECT_EQ(Mismatch(recvs[r]->get(), want, type), "") << rs_what << ", rank " << r;
        }
      }
      if (which == Ops::kAllReduceSumOnly) {
        if (::testing::Test::HasFailure()) return;
        continue;
      }
      // Broadcast from the last rank (rank 0 where n == 1).
      {
        const int root = n - 1;
        std::vector<std::unique_ptr<DeviceBuffer>> bufs;
        std::vector<Work> works;
        for (int r = 0; r < n; ++r) {
          bufs.push_back(std::make_unique<DeviceBuffer>(r, count * size));
          ASSERT_TRUE(bufs.back()->Fill(r == root ? in[r] : std::vector<double>(count, kSentinel), type));
        }
        for (int r = 0; r < n; ++r) works.push_back(group[r]->Broadcast(bufs[r]->get(), count, type, root));
        const std::string what = "Broadcast root " + std::to_string(root) + " (" + shape + ")";
        WaitAll(works, what);
        for (int r = 0; r < n; ++r) {
          cudaSetDevice(r);
          EXPECT_EQ(Mismatch(bufs[r]->get(), in[root], type), "") << what << ", rank " << r;
        }
      }
      // AllGather: every rank's first `block` inputs in rank order.
      {
        std::vector<double> want;
        for (int r = 0; r < n; ++r) want.insert(want.end(), in[r].begin(), in[r].begin() + block);
        std::vector<std::unique_ptr<DeviceBuffer>> sends, recvs;
        std::vector<Work> works;
        for (int r = 0; r < n; ++r) {
          sends.push_back(std::make_unique<DeviceBuffer>(r, block * size));
          recvs.push_back(std::make_unique<DeviceBuffer>(r, block * n * size));
          ASSERT_TRUE(sends.back()->Fill(std::vector<double>(in[r].begin(), in[r].begin() + block), type));
          ASSERT_TRUE(recvs.back()->Fill(std::vector<double>(block * n, kSentinel), type));
        }
        for (int r = 0; r < n; ++r) works.push_back(group[r]->AllGather(sends[r]->get(), recvs[r]->get(), block, type));
        const std::string what = "AllGather (" + shape + ")";
        WaitAll(works, what);
        for (int r = 0; r < n; ++r) {
          cudaSetDevice(r);
          EXPECT_EQ(Mismatch(recvs[r]->get(), want, type), "") << what << ", rank " << r;
        }
      }
      if (::testing::Test::HasFailure()) return;  // one shape's failures say enough
    }
  }
}

// The conformance matrix (conformance_matrix.h) on `group`, as gloo_communicator_test runs it:
// every op, dtype and reduce op at 0, 1, 7 and 1023 elements; every op in float32 at an odd size
// past a megabyte; at 64 MiB every op in float32 (nccl-tests' sizing: an allgather into 64 MiB, a
// reduce-scatter of 64 MiB) and the allreduce sum of both 16-bit types.
void CheckConformanceMatrix(const std::vector<std::unique_ptr<NcclCommunicator>>& group) {
  namespace conformance = collectives::conformance;
  CheckEveryOp(group, std::vector<size_t>(std::begin(conformance::kCounts), std::end(conformance::kCounts)),
               std::vector<DataType>(std::begin(kTypes), std::end(kTypes)));
  if (::testing::Test::HasFailure()) return;
  CheckEveryOp(group, {conformance::kOddMidCount}, {DataType::kFloat32});
  if (::testing::Test::HasFailure()) return;
  CheckEveryOp(group, {conformance::LargeCount(DataType::kFloat32)}, {DataType::kFloat32}, Sizing::kLargestBuffer);
  for (DataType half : {DataType::kFloat16, DataType::kBFloat16}) {
    if (::testing::Test::HasFailure()) return;
    CheckEveryOp(group, {conformance::LargeCount(half)}, {half}, Sizing::kLargestBuffer, Ops::kAllReduceSumOnly);
  }
}

// Runs comm->Abort(reason) on a thread of its own and waits at most `limit` for it: ncclCommAbort
// must return. Returns false (and leaks the communicator, whose destructor would block too) if not.
bool AbortWithin(std::unique_ptr<NcclCommunicator>& comm, const Status& reason, milliseconds limit) {
  NcclCommunicator* raw = comm.get();
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  std::thread([raw, reason, done] {
    raw->Abort(reason);
    done->set_value();
  }).detach();
  if (finished.wait_for(limit) == std::future_status::ready) return true;
  comm.release();  // NOLINT: deliberately leaked, see above
  return false;
}

// Destroys `comm` on a thread of its own and waits at most `limit` (the destructor joins the
// queue's threads, one of which may be in ncclCommAbort). Returns false (and leaks it) if not.
bool DestroyWithin(std::unique_ptr<NcclCommunicator>& comm, milliseconds limit) {
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  std::thread([raw = comm.release(), done] {
    delete raw;
    done->set_value();
  }).detach();
  return finished.wait_for(limit) == std::future_status::ready;
}

TEST(NcclCommunicator, NewUniqueIdIsNcclsBytes) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto a = NcclCommunicator::NewUniqueId();
  auto b = NcclCommunicator::NewUniqueId();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->size(), size_t{NCCL_UNIQUE_ID_BYTES});
  EXPECT_NE(*a, *b) << "two ids must name two groups";
  std::printf("%d GPU(s) visible\n", gpus);
}

TEST(NcclCommunicator, WorldSizeOneMatchesTheReferenceForEveryOpTypeAndReduceOp) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto group = MakeGroup(1);
  ASSERT_EQ(group.size(), 1u);
  auto start = Clock::now();
  CheckConformanceMatrix(group);
  std::printf("world size 1: every op, dtype and reduce op checked in %.1f ms (%d GPU(s) visible)\n",
              Ms(Clock::now() - start), gpus);
  auto barrier = group[0]->Barrier().WaitFor(kOpBound);
  ASSERT_TRUE(barrier.has_value());
  EXPECT_TRUE(barrier->ok()) << *barrier;
  EXPECT_TRUE(group[0]->health().ok()) << group[0]->health();
}

TEST(NcclCommunicator, MultiGpuMatchesTheReferenceForEveryOpTypeAndReduceOp) {
  TROUPE_GPUS_OR_SKIP(gpus);
  if (gpus < 2) {
    GTEST_SKIP() << "needs 2 GPUs, found " << gpus
                 << ": NCCL refuses two ranks of one group on one GPU; runs where there are 2-4 GPUs";
  }
  for (int n : collectives::conformance::kWorldSizes) {
    if (n < 2) continue;  // world size 1 is WorldSizeOneMatchesTheReferenceForEveryOpTypeAndReduceOp
    if (n > gpus) {
      std::printf("world size %d not run: %d GPU(s) here, one rank per GPU\n", n, gpus);
      continue;
    }
    SCOPED_TRACE("world size " + std::to_string(n));
    auto group = MakeGroup(n);
    ASSERT_EQ(group.size(), static_cast<size_t>(n));
    auto start = Clock::now();
    CheckConformanceMatrix(group);
    std::vector<Work> barriers;
    for (auto& comm : group) barriers.push_back(comm->Barrier());
    WaitAll(barriers, "Barrier");
    std::printf("world size %d: every op, dtype and reduce op checked in %.1f ms\n", n, Ms(Clock::now() - start));
    if (HasFailure()) return;
  }
}

TEST(NcclCommunicator, AbortReleasesAnAllReduceBlockedOnAPeerThatNeverIssuesIt) {
  TROUPE_GPUS_OR_SKIP(gpus);
  if (gpus < 2) {
    GTEST_SKIP() << "needs 2 GPUs, found " << gpus
                 << ": NCCL refuses two ranks of one group on one GPU (the one-GPU form is "
                    "InitWhoseSecondRankNeverJoins*)";
  }
  auto group = MakeGroup(2);
  ASSERT_EQ(group.size(), 2u);
  DeviceBuffer buf(0, 1024 * sizeof(float));
  ASSERT_TRUE(buf.Fill(std::vector<double>(1024, 1), DataType::kFloat32));
  Work blocked = group[0]->AllReduce(buf.get(), 1024, DataType::kFloat32, ReduceOp::kSum);  // rank 1 never joins
  EXPECT_FALSE(blocked.WaitFor(milliseconds(200)).has_value()) << "rank 0's allreduce completed without rank 1";
  const Status reason = UnavailableError("rank 1 lost (test)");
  auto start = Clock::now();
  ASSERT_TRUE(AbortWithin(group[0], reason, milliseconds(20000))) << "ncclCommAbort did not return within 20 s";
  auto status = blocked.WaitFor(milliseconds(20000));
  ASSERT_TRUE(status.has_value()) << "the blocked allreduce did not return within 20 s of Abort";
  EXPECT_EQ(*status, reason);
  std::printf("blocked allreduce returned %.1f ms after Abort: %s\n", Ms(Clock::now() - start),
              status->ToString().c_str());
  group[1]->Abort(UnavailableError("rank 0 aborted (test)"));  // rank 1's peer is gone too
}

TEST(NcclCommunicator, InitWhoseSecondRankNeverJoinsEndsWithAbort) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto id = NcclCommunicator::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  NcclOptions options;
  options.rank = 0;
  options.world_size = 2;  // rank 1 never calls Create: works on one GPU
  options.unique_id = *id;
  options.init_timeout = milliseconds(120000);  // Abort, not the timeout, must end it
  auto comm = NcclCommunicator::Create(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  DeviceBuffer buf(0, sizeof(float));
  Work queued = (*comm)->AllReduce(buf.get(), 1, DataType::kFloat32, ReduceOp::kSum);  // waits behind init
  EXPECT_FALSE((*comm)->ready().WaitFor(milliseconds(500)).has_value()) << "init completed with rank 1 missing";
  const Status reason = UnavailableError("rank 1 never joined (test)");
  auto start = Clock::now();
  ASSERT_TRUE(AbortWithin(*comm, reason, milliseconds(20000)))
      << "ncclCommAbort of an initialising communicator did not return within 20 s";
  auto ready = (*comm)->ready().WaitFor(milliseconds(20000));
  ASSERT_TRUE(ready.has_value()) << "initialisation did not end within 20 s of Abort";
  EXPECT_EQ(*ready, reason);
  auto later = queued.WaitFor(milliseconds(1000));
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(*later, reason);
  EXPECT_EQ((*comm)->health(), reason);
  std::printf("initialisation ended %.1f ms after Abort: %s\n", Ms(Clock::now() - start), ready->ToString().c_str());
  start = Clock::now();
  ASSERT_TRUE(DestroyWithin(*comm, milliseconds(20000))) << "the aborted communicator's destructor blocked for 20 s";
  std::printf("destroyed in %.1f ms\n", Ms(Clock::now() - start));
}

TEST(NcclCommunicator, InitWhoseSecondRankNeverJoinsEndsAtItsTimeout) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto id = NcclCommunicator::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  NcclOptions options;
  options.rank = 0;
  options.world_size = 2;
  options.unique_id = *id;
  options.init_timeout = milliseconds(2000);
  auto start = Clock::now();
  auto comm = NcclCommunicator::Create(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  auto ready = (*comm)->ready().WaitFor(milliseconds(30000));
  const double elapsed = Ms(Clock::now() - start);
  ASSERT_TRUE(ready.has_value()) << "initialisation with a 2 s timeout still running after 30 s";
  EXPECT_EQ(ready->code(), StatusCode::kDeadlineExceeded) << *ready;
  EXPECT_GE(elapsed, 1900) << "ended before its timeout: " << *ready;
  std::printf("initialisation ended after %.1f ms (timeout 2000 ms): %s\n", elapsed, ready->ToString().c_str());
  DeviceBuffer buf(0, sizeof(float));
  auto after = (*comm)->AllReduce(buf.get(), 1, DataType::kFloat32, ReduceOp::kSum).WaitFor(milliseconds(1000));
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->code(), StatusCode::kDeadlineExceeded) << *after;
  start = Clock::now();
  // The comm was aborted at the timeout (ncclCommAbort on the queue's watchdog thread, which the
  // destructor joins): the destructor must not block.
  ASSERT_TRUE(DestroyWithin(*comm, milliseconds(20000)))
      << "the destructor blocked for 20 s: ncclCommAbort of the initialising communicator did not return";
  std::printf("destroyed in %.1f ms\n", Ms(Clock::now() - start));
}

TEST(NcclCommunicator, OpsAfterAbortFailWithTheAbortStatusWithoutRunning) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto group = MakeGroup(1);
  ASSERT_EQ(group.size(), 1u);
  DeviceBuffer buf(0, 16 * sizeof(float));
  ASSERT_TRUE(buf.Fill(std::vector<double>(16, 3), DataType::kFloat32));
  auto ok = group[0]->AllReduce(buf.get(), 16, DataType::kFloat32, ReduceOp::kSum).WaitFor(kOpBound);
  ASSERT_TRUE(ok.has_value());
  ASSERT_TRUE(ok->ok()) << *ok;
  const Status reason = UnavailableError("node-b lost (test)");
  ASSERT_TRUE(AbortWithin(group[0], reason, milliseconds(20000))) << "ncclCommAbort did not return within 20 s";
  group[0]->Abort(InternalError("a second reason"));  // idempotent: the first reason wins
  EXPECT_EQ(group[0]->health(), reason);
  std::vector<Work> after = {
      group[0]->AllReduce(buf.get(), 16, DataType::kFloat32, ReduceOp::kSum),
      group[0]->Broadcast(buf.get(), 16, DataType::kFloat32, 0),
      group[0]->AllReduce(buf.get(), 0, DataType::kFloat32, ReduceOp::kSum),  // count 0 too
      group[0]->Barrier(),
  };
  for (const auto& work : after) {
    auto status = work.WaitFor(milliseconds(1000));
    ASSERT_TRUE(status.has_value()) << "an op after Abort did not fail at once";
    EXPECT_EQ(*status, reason);
  }
  EXPECT_EQ(Mismatch(buf.get(), std::vector<double>(16, 3), DataType::kFloat32), "") << "an op ran after Abort";
}

TEST(NcclCommunicator, BadArgumentsAreInvalidArgumentAndLeaveTheCommunicatorWorking) {
  TROUPE_GPUS_OR_SKIP(gpus);
  auto id = NcclCommunicator::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto refused = [&](NcclOptions options, const char* what) {
    auto comm = NcclCommunicator::Create(options);
    ASSERT_FALSE(comm.ok()) << what;
    EXPECT_EQ(comm.status().code(), StatusCode::kInvalidArgument) << what << ": " << comm.status();
    std::printf("%s: %s\n", what, comm.status().ToString().c_str());
  };
  NcclOptions good;
  good.unique_id = *id;
  NcclOptions o = good;
  o.unique_id = "short";
  refused(o, "5-byte unique id");
  o = good;
  o.rank = 2;
  o.world_size = 2;
  refused(o, "rank 2 of 2");
  o = good;
  o.world_size = 0;
  refused(o, "world size 0");
  o = good;
  o.device = gpus;
  refused(o, "device past the last GPU");

  auto group = MakeGroup(1);
  ASSERT_EQ(group.size(), 1u);
  auto& comm = *group[0];
  DeviceBuffer buf(0, 64 * sizeof(float));
  std::vector<float> host(64, 1.0f);
  auto invalid = [&](Work work, const char* what) {
    ASSERT_TRUE(work.done()) << what << ": refused arguments must fail at once";
    Status status = work.Wait();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << what << ": " << status;
    std::printf("%s: %s\n", what, status.ToString().c_str());
  };
  invalid(comm.AllReduce(nullptr, 3, DataType::kFloat32, ReduceOp::kSum), "null buffer");
  invalid(comm.AllReduce(host.data(), 64, DataType::kFloat32, ReduceOp::kSum), "host buffer");
  invalid(comm.Broadcast(buf.get(), 64, DataType::kFloat32, 1), "root 1 of 1");
  invalid(comm.Broadcast(buf.get(), 64, DataType::kFloat32, -1), "root -1");
  invalid(comm.AllGather(buf.get(), buf.get(), 8, DataType::kFloat32), "allgather in place");
  invalid(comm.ReduceScatter(buf.get(), static_cast<char*>(buf.get()) + 4, 8, DataType::kFloat32, ReduceOp::kSum),
          "overlapping reduce-scatter");
  invalid(comm.AllReduce(buf.get(), 8, static_cast<DataType>(42), ReduceOp::kSum), "unknown data type");
  invalid(comm.AllReduce(buf.get(), 8, DataType::kFloat32, static_cast<ReduceOp>(42)), "unknown reduce op");
  EXPECT_TRUE(comm.health().ok()) << "refused arguments broke the communicator: " << comm.health();
  ASSERT_TRUE(buf.Fill(std::vector<double>(64, 2), DataType::kFloat32));
  auto fine = comm.AllReduce(buf.get(), 64, DataType::kFloat32, ReduceOp::kMax).WaitFor(kOpBound);
  ASSERT_TRUE(fine.has_value());
  EXPECT_TRUE(fine->ok()) << *fine;
  EXPECT_EQ(Mismatch(buf.get(), std::vector<double>(64, 2), DataType::kFloat32), "");
}

}  // namespace
}  // namespace troupe::testing
