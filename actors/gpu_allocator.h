// GPU memory for in-process workers: a device interface (CUDA, loaded at run time), and the
// capped allocator that holds a worker to its slice's memory.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/status.h"

namespace troupe::actors {

/// Raw device memory. Implementations: CudaDevice; FakeGpuDevice in tests.
class GpuMemoryDevice {
 public:
  virtual ~GpuMemoryDevice() = default;
  virtual StatusOr<void*> Allocate(uint64_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
};

/// One CUDA device through the CUDA runtime, loaded at run time (libcudart), so builds and
/// hosts without CUDA work; Open says why when there is no usable GPU.
class CudaDevice : public GpuMemoryDevice {
 public:
  /// FailedPrecondition (no CUDA runtime library, no device, no such index) with the reason.
  static StatusOr<std::unique_ptr<CudaDevice>> Open(int index);
  ~CudaDevice() override;
  StatusOr<void*> Allocate(uint64_t bytes) override;
  void Free(void* ptr) override;

 private:
  struct Api;
  CudaDevice() = default;
  Status Select();
  void* library_ = nullptr;
  std::unique_ptr<Api> api_;
  int index_ = 0;
};

/// Allocates through `device` but never more than `cap_bytes` in total at a time: the slice's
/// memory. A request beyond it gets ResourceExhausted naming the slice, the request and what is
/// in use, and the device is not asked. Thread-safe.
class CappedAllocator {
 public:
  CappedAllocator(GpuMemoryDevice& device, uint64_t cap_bytes, std::string slice_name);
  ~CappedAllocator();
  StatusOr<void*> Allocate(uint64_t bytes);
  /// Frees a pointer this allocator returned; InvalidArgument for any other pointer.
  Status Free(void* ptr);
  uint64_t used_bytes() const;
  uint64_t cap_bytes() const { return cap_; }

 private:
  GpuMemoryDevice& device_;
  const uint64_t cap_;
  const std::string name_;
  mutable std::mutex mu_;
  uint64_t used_ = 0;
  std::unordered_map<void*, uint64_t> sizes_;
};

}  // namespace troupe::actors
