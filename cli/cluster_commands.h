// The cluster commands of the troupe CLI: head, node, up, down, status, slices, events, run. Their
// flags are declared with CLI11 in cli/troupe_main.cc; these functions get the parsed values.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <memory>

#include "cluster/client.h"
#include "cluster/messages.h"

namespace troupe::cli {

/// The flags the cluster commands share (each command declares the ones it uses).
struct ClusterOptions {
  std::string config_path;  // -c, --config FILE
  std::string name;         // --name NODE (troupe node)
  std::string head;         // --head HOST:PORT; empty: from the config (docs/cli.md)
  std::string log_level;    // --log-level; empty: the config's (warn for the client commands)
  bool json = false;        // --json
  std::string listen;       // --listen HOST:PORT (troupe gateway); empty: the config's gateway.listen
};

/// `troupe run`'s flags: the lease to ask for and the command to run on it.
struct RunOptions {
  ClusterOptions cluster;
  cluster::LeaseRequest request;  // --memory, --compute, --cpus, --tenant, --priority, --policy
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};  // --timeout: how long to wait for the lease
  std::vector<std::string> command;  // everything after `--`, never empty
};

/// Connects a client for a command with the common arguments (log level warn unless given).
StatusOr<std::unique_ptr<cluster::Client>> ConnectFor(ClusterOptions& args);

int RunHead(ClusterOptions args);
/// `troupe gateway -c FILE [--listen HOST:PORT]`: the OpenAI-compatible HTTP gateway in front of
/// the cluster (docs/gateway.md); prints "GATEWAY http://HOST:PORT" once it serves.
int RunGateway(ClusterOptions args);
int RunNode(ClusterOptions args);
int RunUp(ClusterOptions args);
int RunDown(ClusterOptions args);
int RunStatus(ClusterOptions args);
/// troupe slices: every GPU's slices, owners and free capacity (--json).
int RunSlices(ClusterOptions args);
/// troupe events: the supervision events the head was sent (--json).
int RunEvents(ClusterOptions args);
/// troupe run: leases a slice and runs a command on it (CUDA_VISIBLE_DEVICES, MPS limits).
int RunOnSlice(RunOptions args);

}  // namespace troupe::cli
