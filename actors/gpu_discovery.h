// GPU discovery through NVML, loaded at run time (dlopen of libnvidia-ml.so.1), so troupe builds
// and runs where no NVIDIA driver is installed; and the simulated GPUs a config declares instead.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::actors {

/// One GPU as a node sees it now.
struct GpuDevice {
  uint32_t index = 0;        ///< CUDA/NVML index on the node (what CUDA_VISIBLE_DEVICES names)
  std::string name;          ///< "NVIDIA H100 80GB HBM3", or the configured name
  std::string uuid;          ///< "GPU-..." (real) or "SIM-<node>-<index>" (simulated)
  uint64_t memory_total_bytes = 0;
  uint64_t memory_used_bytes = 0;
  double utilisation = 0;    ///< 0..1 over NVML's last sample period
  bool simulated = false;
};

/// Reads GPUs through NVML. Thread-compatible (one owner, e.g. the node agent's refresh loop).
class Nvml {
 public:
  /// Loads libnvidia-ml.so.1 and initialises NVML. Unavailable, saying why (no library: no
  /// driver installed; init failed: driver not loaded), if it cannot.
  static StatusOr<std::unique_ptr<Nvml>> Open();
  ~Nvml();
  /// Every GPU with its current memory use and utilisation.
  StatusOr<std::vector<GpuDevice>> Devices();

 private:
  struct Api;
  Nvml() = default;
  void* library_ = nullptr;
  std::unique_ptr<Api> api_;
};

}  // namespace troupe::actors
