// FakeGpuDevice: host memory standing in for a GPU, with a capacity and a count of calls, for
// tests of what sits above GpuMemoryDevice (the capped allocator).
#pragma once

#include <cstdlib>
#include <map>
#include <set>

#include "actors/gpu_allocator.h"

namespace troupe::testing {

class FakeGpuDevice : public actors::GpuMemoryDevice {
 public:
  explicit FakeGpuDevice(uint64_t capacity) : capacity_(capacity) {}
  ~FakeGpuDevice() override {
    for (void* p : live_) std::free(p);
  }
  StatusOr<void*> Allocate(uint64_t bytes) override {
    ++allocations_;
    if (bytes > capacity_ - used_) return ResourceExhaustedError("fake device out of memory");
    void* p = std::malloc(bytes ? bytes : 1);
    used_ += bytes;
    live_.insert(p);
    sizes_[p] = bytes;
    return p;
  }
  void Free(void* p) override {
    used_ -= sizes_[p];
    sizes_.erase(p);
    live_.erase(p);
    std::free(p);
  }
  uint64_t used() const { return used_; }
  int allocations() const { return allocations_; }
  size_t live() const { return live_.size(); }

 private:
  uint64_t capacity_;
  uint64_t used_ = 0;
  int allocations_ = 0;
  std::set<void*> live_;
  std::map<void*, uint64_t> sizes_;
};

}  // namespace troupe::testing
