// Fuzz target: the cluster config parser on arbitrary text. It must return a config or a list
// of errors, never throw, abort or read outside its input.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cluster/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  // base_dir names no directory, so a token_file in the input cannot reach a real file.
  auto errors = troupe::cluster::ValidateClusterConfigText(text, "fuzz.yaml", "/nonexistent-troupe-fuzz");
  for (const auto& e : errors) {
    if (e.ToString().empty()) __builtin_trap();
  }
  return 0;
}
