// bulk_peer: a troupe node that receives bulk transfers for the bulk path's multi-process tests.
// It serves checkpoint shards for every job under --root (`<root>/<job>`), has a sink of kind
// "stall" that never answers (it prints STALLED <size>), and prints
//   READY <node id> <address>
// then runs until stdin closes or says "quit"; "stats" prints STATS <transfers failed> <bytes
// accepted>.
#include <chrono>
#include <future>
#include <iostream>
#include <string>

#include "actors/training/shard_transfer.h"
#include "common/logging.h"
#include "runtime/bulk.h"
#include "runtime/runtime.h"

using namespace troupe;

int main(int argc, char** argv) {
  runtime::RuntimeConfig config;
  runtime::BulkConfig bulk;
  std::string root;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--node-id") config.node_id = std::stoull(value());
    else if (arg == "--token") config.transport.cluster_token = value();
    else if (arg == "--root") root = value();
    else if (arg == "--max-transfer-bytes") bulk.limits.max_transfer_bytes = std::stoull(value());
    else if (arg == "--max-transfers") bulk.limits.max_transfers_accepted = std::stoull(value());
    else if (arg == "--stall-timeout-ms") bulk.stall_timeout = std::chrono::milliseconds(std::stoll(value()));
    else {
      std::cerr << "bulk_peer: unknown argument " << arg << "\n";
      return 2;
    }
  }
  config.node_name = "bulk-peer";
  if (!InitLogging("warn").ok()) return 2;
  auto started = runtime::Runtime::Start(config);
  if (!started.ok()) {
    std::cerr << "bulk_peer: " << started.status() << "\n";
    return 2;
  }
  auto& rt = **started;
  auto endpoint = runtime::BulkEndpoint::Attach(rt, bulk);
  if (!endpoint.ok()) {
    std::cerr << "bulk_peer: " << endpoint.status() << "\n";
    return 2;
  }
  auto served = training::ServeCheckpointShards(
      **endpoint, [root](const std::string& job) -> StatusOr<std::string> { return root + "/" + job; });
  if (!served.ok()) {
    std::cerr << "bulk_peer: " << served << "\n";
    return 2;
  }
  // "stall": an offer whose sink never comes (the test kills this process while its sender waits).
  auto stall = (*endpoint)->RegisterSink("stall", [](runtime::NodeId, const runtime::BulkDescriptor& d)
                                                      -> StatusOr<runtime::BulkSink> {
    std::cout << "STALLED " << d.size << std::endl;
    std::promise<void>().get_future().wait();
    return UnavailableError("unreachable");
  });
  if (!stall.ok()) return 2;
  std::cout << "READY " << rt.node_id() << " " << rt.address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
    if (line == "stats") {
      const auto stats = (*endpoint)->stats();
      std::cout << "STATS " << stats.transfers_failed << " " << stats.bytes_accepted << std::endl;
    }
  }
  endpoint->reset();
  rt.Stop();
  rt.AwaitActors(std::chrono::seconds(5));
  return 0;
}
