// Slice environments.
#include "actors/slice_environment.h"

#include <sys/stat.h>

#include <cstdlib>

namespace troupe::actors {

std::string FindMpsPipeDirectory() {
  const char* configured = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  std::string dir = configured && *configured ? configured : "/tmp/nvidia-mps";
  struct stat st {};
  if (stat((dir + "/control").c_str(), &st) != 0 || !S_ISFIFO(st.st_mode)) return "";
  return dir;
}

std::vector<std::string> SliceEnvironment(const SliceAssignment& slice, const std::string& mps_pipe_dir) {
  std::vector<std::string> env;
  env.push_back("CUDA_VISIBLE_DEVICES=" +
                (slice.simulated || slice.gpu_uuid.empty() ? std::to_string(slice.gpu_index) : slice.gpu_uuid));
  if (!mps_pipe_dir.empty() && !slice.simulated) {
    env.push_back("CUDA_MPS_PIPE_DIRECTORY=" + mps_pipe_dir);
    env.push_back("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=" + std::to_string(slice.memory_bytes >> 20) + "M");
    env.push_back("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=" + std::to_string(slice.compute_percent));
  }
  env.push_back("TROUPE_SLICE_MEMORY_BYTES=" + std::to_string(slice.memory_bytes));
  env.push_back("TROUPE_SLICE_COMPUTE_PERCENT=" + std::to_string(slice.compute_percent));
  env.push_back("TROUPE_LEASE_ID=" + std::to_string(slice.lease_id));
  if (slice.simulated) env.push_back("TROUPE_GPU_SIMULATED=1");
  return env;
}

std::vector<std::string> NoGpuEnvironment(uint64_t lease_id) {
  return {"CUDA_VISIBLE_DEVICES=", "TROUPE_LEASE_ID=" + std::to_string(lease_id)};
}

std::vector<std::string> SliceEnvironmentPrefixes() { return {"CUDA_VISIBLE_DEVICES", "CUDA_MPS_", "TROUPE_"}; }

}  // namespace troupe::actors
