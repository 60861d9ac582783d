// What a child process started on a GPU slice sees: only its GPU, and (where an MPS daemon
// runs) the MPS memory and thread limits of its slice.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace troupe::actors {

/// One worker's share of one GPU.
struct SliceAssignment {
  uint32_t gpu_index = 0;
  std::string gpu_uuid;      ///< empty for simulated GPUs
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 100;
  bool simulated = false;
  uint64_t lease_id = 0;
};

/// The MPS control directory if an MPS daemon runs here (CUDA_MPS_PIPE_DIRECTORY, else
/// /tmp/nvidia-mps, holding its `control` pipe); empty if none.
std::string FindMpsPipeDirectory();

/// "NAME=value" entries for a child on `slice`:
///  - CUDA_VISIBLE_DEVICES: the GPU's UUID (its index for simulated GPUs), so the child sees
///    that GPU only, as device 0;
///  - with MPS (`mps_pipe_dir` not empty): CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_PINNED_DEVICE_MEM_LIMIT
///    ("0=<MiB>M") and CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (the compute share): limits the driver
///    enforces;
///  - TROUPE_SLICE_MEMORY_BYTES, TROUPE_SLICE_COMPUTE_PERCENT, TROUPE_LEASE_ID and, for simulated
///    GPUs, TROUPE_GPU_SIMULATED=1: for frameworks that cap themselves (e.g. PyTorch's
///    set_per_process_memory_fraction).
std::vector<std::string> SliceEnvironment(const SliceAssignment& slice, const std::string& mps_pipe_dir);

/// "NAME=value" entries for a child of a lease without a GPU: CUDA_VISIBLE_DEVICES is empty (CUDA
/// then shows no device at all) and TROUPE_LEASE_ID names the lease.
std::vector<std::string> NoGpuEnvironment(uint64_t lease_id);

/// Name prefixes of the variables a slice's environment owns (CUDA_VISIBLE_DEVICES, the MPS
/// limits, every TROUPE_ variable): a child on a slice gets none of them from its caller's
/// environment, only the slice's (SpawnOptions::drop_env_prefixes).
std::vector<std::string> SliceEnvironmentPrefixes();

}  // namespace troupe::actors
