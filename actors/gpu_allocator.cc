// Capped GPU memory.
#include "actors/gpu_allocator.h"

#include <dlfcn.h>

namespace troupe::actors {

struct CudaDevice::Api {
  int (*get_count)(int*);
  int (*set_device)(int);
  int (*malloc)(void**, size_t);
  int (*free)(void*);
  const char* (*error)(int);
  std::string Error(const std::string& what, int r) const { return what + ": " + (error ? error(r) : "CUDA error"); }
};

StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Open(int index) {
  void* lib = nullptr;
  for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so", "/usr/local/cuda/lib64/libcudart.so"}) {
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
  }
  if (lib == nullptr) return FailedPreconditionError("no CUDA runtime library (libcudart) on this host");
  std::unique_ptr<CudaDevice> dev(new CudaDevice());
  dev->library_ = lib;
  dev->api_ = std::make_unique<Api>();
  dev->index_ = index;
  Api& api = *dev->api_;
  auto sym = [&](const char* name, auto& fn) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    return fn != nullptr;
  };
  if (!sym("cudaGetDeviceCount", api.get_count) || !sym("cudaSetDevice", api.set_device) ||
      !sym("cudaMalloc", api.malloc) || !sym("cudaFree", api.free) || !sym("cudaGetErrorString", api.error)) {
    return FailedPreconditionError("libcudart lacks an entry point troupe needs");
  }
  int count = 0;
  if (int r = api.get_count(&count); r != 0) return FailedPreconditionError(api.Error("no usable GPU", r));
  if (index < 0 || index >= count) {
    return FailedPreconditionError("GPU " + std::to_string(index) + " does not exist (this host has " +
                                   std::to_string(count) + ")");
  }
  return dev;
}

CudaDevice::~CudaDevice() {
  if (library_) dlclose(library_);
}

Status CudaDevice::Select() {
  if (int r = api_->set_device(index_); r != 0) return FailedPreconditionError(api_->Error("cudaSetDevice", r));
  return OkStatus();
}

StatusOr<void*> CudaDevice::Allocate(uint64_t bytes) {
  RETURN_IF_ERROR(Select());
  void* ptr = nullptr;
  if (int r = api_->malloc(&ptr, bytes); r != 0) {
    return ResourceExhaustedError(api_->Error("cudaMalloc(" + std::to_string(bytes) + ")", r));
  }
  return ptr;
}

void CudaDevice::Free(void* ptr) {
  if (Select().ok()) api_->free(ptr);
}

CappedAllocator::CappedAllocator(GpuMemoryDevice& device, uint64_t cap_bytes, std::string slice_name)
    : device_(device), cap_(cap_bytes), name_(std::move(slice_name)) {}

CappedAllocator::~CappedAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [ptr, size] : sizes_) device_.Free(ptr);
}

StatusOr<void*> CappedAllocator::Allocate(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes > cap_ || used_ > cap_ - bytes) {
    return ResourceExhaustedError("slice " + name_ + ": allocating " + std::to_string(bytes) + " bytes would exceed its " +
                                  std::to_string(cap_) + "-byte limit (" + std::to_string(used_) +
                                  " bytes in use); free memory or lease a larger slice");
  }
  ASSIGN_OR_RETURN(void* ptr, device_.Allocate(bytes));
  used_ += bytes;
  sizes_[ptr] = bytes;
  return ptr;
}

Status CappedAllocator::Free(void* ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sizes_.find(ptr);
  if (it == sizes_.end()) return InvalidArgumentError("slice " + name_ + ": free of a pointer it did not allocate");
  device_.Free(ptr);
  used_ -= it->second;
  sizes_.erase(it);
  return OkStatus();
}

uint64_t CappedAllocator::used_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

}  // namespace troupe::actors
