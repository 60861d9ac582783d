// NVML through dlopen. The few entry points troupe uses are declared here with NVML's stable
// C ABI (nvml.h), so that no NVML header or library is needed to build.
#include "actors/gpu_discovery.h"

#include <dlfcn.h>

namespace troupe::actors {

namespace {
using nvmlReturn = int;  // NVML_SUCCESS = 0
using nvmlDevice = struct nvmlDeviceOpaque*;
struct nvmlMemory {
  unsigned long long total, free, used;
};
struct nvmlUtilization {
  unsigned int gpu, memory;  // percent
};
}  // namespace

struct Nvml::Api {
  nvmlReturn (*init)();
  nvmlReturn (*shutdown)();
  nvmlReturn (*count)(unsigned int*);
  nvmlReturn (*handle)(unsigned int, nvmlDevice*);
  nvmlReturn (*name)(nvmlDevice, char*, unsigned int);
  nvmlReturn (*uuid)(nvmlDevice, char*, unsigned int);
  nvmlReturn (*memory)(nvmlDevice, nvmlMemory*);
  nvmlReturn (*utilisation)(nvmlDevice, nvmlUtilization*);
  const char* (*error)(nvmlReturn);

  std::string Error(const char* what, nvmlReturn r) const {
    return std::string(what) + ": " + (error ? error(r) : "NVML error " + std::to_string(r));
  }
};

StatusOr<std::unique_ptr<Nvml>> Nvml::Open() {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return UnavailableError(std::string("NVML not found (no NVIDIA driver on this host?): ") + dlerror());
  }
  std::unique_ptr<Nvml> nvml(new Nvml());
  nvml->library_ = lib;
  nvml->api_ = std::make_unique<Api>();
  Api& api = *nvml->api_;
  auto sym = [&](const char* name, auto& fn) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    return fn != nullptr;
  };
  if (!sym("nvmlInit_v2", api.init) || !sym("nvmlShutdown", api.shutdown) ||
      !sym("nvmlDeviceGetCount_v2", api.count) || !sym("nvmlDeviceGetHandleByIndex_v2", api.handle) ||
      !sym("nvmlDeviceGetName", api.name) || !sym("nvmlDeviceGetUUID", api.uuid) ||
      !sym("nvmlDeviceGetMemoryInfo", api.memory) || !sym("nvmlDeviceGetUtilizationRates", api.utilisation) ||
      !sym("nvmlErrorString", api.error)) {
    return UnavailableError("libnvidia-ml.so.1 lacks an NVML entry point troupe needs (driver too old?)");
  }
  if (nvmlReturn r = api.init(); r != 0) {
    api.shutdown = nullptr;
    return UnavailableError(api.Error("nvmlInit", r));
  }
  return nvml;
}

Nvml::~Nvml() {
  if (api_ && api_->shutdown) api_->shutdown();
  if (library_) dlclose(library_);
}

StatusOr<std::vector<GpuDevice>> Nvml::Devices() {
  unsigned int count = 0;
  if (nvmlReturn r = api_->count(&count); r != 0) return UnavailableError(api_->Error("nvmlDeviceGetCount", r));
  std::vector<GpuDevice> out;
  for (unsigned int i = 0; i < count; ++i) {
    nvmlDevice device = nullptr;
    if (nvmlReturn r = api_->handle(i, &device); r != 0) {
      return UnavailableError(api_->Error(("nvmlDeviceGetHandleByIndex(" + std::to_string(i) + ")").c_str(), r));
    }
    GpuDevice gpu;
    gpu.index = i;
    char text[128] = {0};
    if (api_->name(device, text, sizeof(text)) == 0) gpu.name = text;
    if (api_->uuid(device, text, sizeof(text)) == 0) gpu.uuid = text;
    nvmlMemory memory{};
    if (nvmlReturn r = api_->memory(device, &memory); r != 0) {
      return UnavailableError(api_->Error("nvmlDeviceGetMemoryInfo", r));
    }
    gpu.memory_total_bytes = memory.total;
    gpu.memory_used_bytes = memory.used;
    nvmlUtilization util{};
    if (api_->utilisation(device, &util) == 0) gpu.utilisation = util.gpu / 100.0;
    out.push_back(std::move(gpu));
  }
  return out;
}

}  // namespace troupe::actors
