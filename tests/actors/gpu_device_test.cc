// On a GPU (label gpu): NVML lists the real GPUs, and the capped allocator over real CUDA memory
// refuses an allocation beyond its slice while one within it succeeds. Skipped, with the reason,
// where there is no GPU.
#include <gtest/gtest.h>

#include "actors/gpu_allocator.h"
#include "actors/gpu_discovery.h"

namespace troupe::testing {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(GpuDevice, NvmlListsTheGpus) {
  auto nvml = actors::Nvml::Open();
  if (!nvml.ok()) GTEST_SKIP() << "no GPU here (" << nvml.status().message() << "); runs on a GPU machine";
  auto devices = (*nvml)->Devices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_FALSE(devices->empty());
  for (const auto& d : *devices) {
    std::printf("GPU %u: %s %s, %llu MiB total, %llu MiB used, %.0f%% busy\n", d.index, d.name.c_str(),
                d.uuid.c_str(), static_cast<unsigned long long>(d.memory_total_bytes / kMiB),
                static_cast<unsigned long long>(d.memory_used_bytes / kMiB), d.utilisation * 100);
    EXPECT_GT(d.memory_total_bytes, 0u);
    EXPECT_EQ(d.uuid.rfind("GPU-", 0), 0u) << d.uuid;
  }
}

TEST(GpuDevice, CappedAllocatorRefusesBeyondTheSliceOnARealGpu) {
  auto device = actors::CudaDevice::Open(0);
  if (!device.ok()) GTEST_SKIP() << "no GPU here (" << device.status().message() << "); runs on a GPU machine";
  actors::CappedAllocator slice(**device, 256 * kMiB, "gpu0/test-slice");
  auto within = slice.Allocate(192 * kMiB);
  ASSERT_TRUE(within.ok()) << within.status();
  auto beyond = slice.Allocate(128 * kMiB);
  EXPECT_EQ(beyond.status().code(), StatusCode::kResourceExhausted) << beyond.status();
  std::printf("refused: %s\n", beyond.status().ToString().c_str());
  auto rest = slice.Allocate(64 * kMiB);
  EXPECT_TRUE(rest.ok()) << rest.status();
  ASSERT_TRUE(slice.Free(*within).ok());
  EXPECT_TRUE(slice.Allocate(128 * kMiB).ok()) << "freed memory is available again";
}

}  // namespace
}  // namespace troupe::testing
