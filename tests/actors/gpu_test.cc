// GPU slices without a GPU: the capped allocator's accounting against a fake device, slice
// environments (MPS limits with a stand-in MPS control pipe), NVML's absence reported clearly,
// and the GpuSlice actor's lease, which ends when its owner exits.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "actors/gpu_allocator.h"
#include "actors/gpu_discovery.h"
#include "actors/gpu_slice.h"
#include "actors/slice_environment.h"
#include "runtime/runtime.h"
#include "tests/fakes/fake_gpu_device.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(CappedAllocator, AllocatesWithinTheSliceAndRefusesBeyondIt) {
  FakeGpuDevice device(1024 * kMiB);
  actors::CappedAllocator alloc(device, 100 * kMiB, "gpu0/slice2");
  auto a = alloc.Allocate(60 * kMiB);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = alloc.Allocate(50 * kMiB);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("gpu0/slice2"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("limit"), std::string::npos) << b.status();
  EXPECT_EQ(device.allocations(), 1) << "a refused allocation never reaches the device";
  auto c = alloc.Allocate(40 * kMiB);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(alloc.used_bytes(), 100 * kMiB);
  EXPECT_FALSE(alloc.Allocate(1).ok()) << "exactly full";
  ASSERT_TRUE(alloc.Free(*a).ok());
  EXPECT_EQ(alloc.used_bytes(), 40 * kMiB);
  EXPECT_TRUE(alloc.Allocate(60 * kMiB).ok());
  EXPECT_FALSE(alloc.Allocate(UINT64_MAX).ok()) << "no overflow in the check";
  int x = 0;
  EXPECT_EQ(alloc.Free(&x).code(), StatusCode::kInvalidArgument);
}

TEST(CappedAllocator, DeviceErrorsPassThroughAndNothingIsCounted) {
  FakeGpuDevice device(10 * kMiB);  // smaller than the slice: the device says no first
  actors::CappedAllocator alloc(device, 100 * kMiB, "s");
  EXPECT_EQ(alloc.Allocate(20 * kMiB).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(alloc.used_bytes(), 0u);
}

TEST(CappedAllocator, FreesWhatIsLeftWhenDestroyed) {
  FakeGpuDevice device(1024 * kMiB);
  {
    actors::CappedAllocator alloc(device, 100 * kMiB, "s");
    ASSERT_TRUE(alloc.Allocate(10 * kMiB).ok());
    ASSERT_TRUE(alloc.Allocate(10 * kMiB).ok());
  }
  EXPECT_EQ(device.live(), 0u);
  EXPECT_EQ(device.used(), 0u);
}

TEST(SliceEnvironment, ShowsOnlyTheSlicesGpuAndItsLimits) {
  actors::SliceAssignment slice;
  slice.gpu_index = 3;
  slice.gpu_uuid = "GPU-1234";
  slice.memory_bytes = 20 * 1024 * kMiB;
  slice.compute_percent = 25;
  slice.lease_id = 7;
  auto env = actors::SliceEnvironment(slice, "");
  auto has = [&](const std::string& e) { return std::find(env.begin(), env.end(), e) != env.end(); };
  EXPECT_TRUE(has("CUDA_VISIBLE_DEVICES=GPU-1234"));
  EXPECT_TRUE(has("TROUPE_SLICE_MEMORY_BYTES=" + std::to_string(20 * 1024 * kMiB)));
  EXPECT_TRUE(has("TROUPE_LEASE_ID=7"));
  for (const auto& e : env) EXPECT_EQ(e.rfind("CUDA_MPS", 0), std::string::npos) << "no MPS daemon: " << e;

  env = actors::SliceEnvironment(slice, "/run/mps");
  EXPECT_TRUE(has("CUDA_MPS_PIPE_DIRECTORY=/run/mps"));
  EXPECT_TRUE(has("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M"));
  EXPECT_TRUE(has("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"));

  slice.simulated = true;
  env = actors::SliceEnvironment(slice, "/run/mps");
  EXPECT_TRUE(has("CUDA_VISIBLE_DEVICES=3"));
  EXPECT_TRUE(has("TROUPE_GPU_SIMULATED=1"));
}

TEST(SliceEnvironment, FindsAnMpsDaemonByItsControlPipe) {
  std::string dir = (std::filesystem::temp_directory_path() / ("troupe-mps-" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  setenv("CUDA_MPS_PIPE_DIRECTORY", dir.c_str(), 1);
  EXPECT_EQ(actors::FindMpsPipeDirectory(), "") << "no control pipe yet";
  ASSERT_EQ(mkfifo((dir + "/control").c_str(), 0600), 0);
  EXPECT_EQ(actors::FindMpsPipeDirectory(), dir);
  unsetenv("CUDA_MPS_PIPE_DIRECTORY");
  std::filesystem::remove_all(dir);
}

TEST(Nvml, ReportsClearlyWhyItCannotOpen) {
  auto nvml = actors::Nvml::Open();
  if (nvml.ok()) {
    auto devices = (*nvml)->Devices();
    ASSERT_TRUE(devices.ok()) << devices.status();
    for (const auto& d : *devices) EXPECT_GT(d.memory_total_bytes, 0u) << d.name;
    GTEST_SKIP() << "NVML is present here; its absence is what this test checks (GPU tests cover the rest)";
  }
  EXPECT_EQ(nvml.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(nvml.status().message().find("NVML"), std::string::npos) << nvml.status();
}

TEST(GpuSlice, ALeaseEndsWhenItsOwnerExits) {
  runtime::RuntimeConfig config;
  config.node_name = "slices";
  config.transport.cluster_token = "slice-test";
  auto rt = runtime::Runtime::Start(config);
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<uint64_t, std::string>> changes;
  actors::SliceListener listener = [&](const actors::SliceInfo&, uint64_t lease, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    changes.emplace_back(lease, why);
    cv.notify_all();
  };
  actors::SliceInfo info;
  info.gpu_id = "sim-0";
  info.memory_bytes = 10 * 1024 * kMiB;
  auto slice = (*rt)->Spawn(actors::GpuSlice, info, listener);
  auto owner = (*rt)->Spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto other = (*rt)->Spawn([]() -> caf::behavior { return {[](int) {}}; });

  auto leased = slice.Request<bool>(actors::SliceLease{1, owner, true, ""}, 5s);
  ASSERT_TRUE(leased.ok() && *leased);
  auto taken = slice.Request<bool>(actors::SliceLease{2, other, true, ""}, 5s);
  ASSERT_TRUE(taken.ok());
  EXPECT_FALSE(*taken) << "a leased slice has one owner";
  auto status = slice.Request<actors::SliceStatus>(actors::SliceQuery{}, 5s);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->lease_id, 1u);

  caf::anon_send_exit(owner.handle(), caf::exit_reason::kill);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return changes.size() == 2; })) << "the lease did not end";
    EXPECT_EQ(changes[0].second, "") << "lease 1 started";
    EXPECT_EQ(changes[1].first, 1u) << "lease 1 ended";
    EXPECT_NE(changes[1].second.find("owner gone"), std::string::npos) << changes[1].second;
  }
  // Free again: the other owner gets it, and an explicit release ends that lease.
  leased = slice.Request<bool>(actors::SliceLease{2, other, true, ""}, 5s);
  ASSERT_TRUE(leased.ok() && *leased);
  auto wrong = slice.Request<bool>(actors::SliceRelease{1}, 5s);
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(*wrong);
  auto released = slice.Request<bool>(actors::SliceRelease{2}, 5s);
  ASSERT_TRUE(released.ok() && *released);
  status = slice.Request<actors::SliceStatus>(actors::SliceQuery{}, 5s);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->lease_id, 0u);
  (*rt)->Stop();
}

}  // namespace
}  // namespace troupe::testing
