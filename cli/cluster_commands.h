// The cluster commands of the troupe CLI: head, node, up, down, status.
#pragma once

#include <string>
#include <vector>

namespace troupe::cli {

int RunHead(const std::vector<std::string>& args);
int RunNode(const std::vector<std::string>& args);
int RunUp(const std::vector<std::string>& args);
int RunDown(const std::vector<std::string>& args);
int RunStatus(const std::vector<std::string>& args);
/// troupe slices: every GPU's slices, owners and free capacity (--json).
int RunSlices(const std::vector<std::string>& args);
/// troupe events: the supervision events the head was sent (--json).
int RunEvents(const std::vector<std::string>& args);
/// troupe run: leases a slice and runs a command on it (CUDA_VISIBLE_DEVICES, MPS limits).
int RunOnSlice(const std::vector<std::string>& args);

}  // namespace troupe::cli
