// cluster_client: a program using troupe::cluster::Client. It connects to a running cluster
// (`troupe up -c FILE`), lists the nodes, then prints every membership change until Ctrl-C
// (or for --watch SECONDS).
//
//   cluster_client -c configs/local.yaml [--watch SECONDS]
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <iostream>
#include <mutex>
#include <string>

#include "cluster/client.h"
#include "cluster/config.h"
#include "common/logging.h"

namespace {

std::mutex mu;
std::condition_variable cv;
bool stop = false;

void OnSignal(int) { stop = true; }

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  int watch_seconds = -1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a == "--watch" && i + 1 < argc) {
      watch_seconds = std::stoi(argv[++i]);
    } else {
      std::cerr << "usage: cluster_client -c FILE [--watch SECONDS]\n";
      return 2;
    }
  }
  if (config_path.empty()) {
    std::cerr << "usage: cluster_client -c FILE [--watch SECONDS]\n";
    return 2;
  }
  (void)troupe::InitLogging("warn");
  auto config = troupe::cluster::LoadClusterConfig(config_path);
  if (!config.ok()) {
    std::cerr << "cluster_client: " << config.status().message() << "\n";
    return 2;
  }
  auto client = troupe::cluster::Client::Connect(*config, "", std::chrono::seconds(5));
  if (!client.ok()) {
    std::cerr << "cluster_client: " << client.status().message() << "\n";
    return 1;
  }
  auto nodes = (*client)->SubscribeMembership(
      [](const troupe::cluster::NodeRecord& node) {
        std::lock_guard<std::mutex> lock(mu);
        std::cout << "event: node " << node.name << " is " << node.state
                  << (node.reason.empty() ? "" : " (" + node.reason + ")") << std::endl;
      },
      std::chrono::seconds(5));
  if (!nodes.ok()) {
    std::cerr << "cluster_client: " << nodes.status().message() << "\n";
    return 1;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    std::cout << "cluster " << nodes->cluster_name << " at " << (*client)->head_address() << ":\n";
    for (const auto& n : nodes->nodes) {
      std::cout << "  node " << n.name << " is " << n.state << ", " << n.cpus << " CPUs, " << n.gpus.size() << " GPUs"
                << std::endl;
    }
    std::cout << "watching membership" << std::endl;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(watch_seconds);
  while (!stop && (watch_seconds < 0 || std::chrono::steady_clock::now() < deadline)) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::milliseconds(100));
  }
  return 0;
}
