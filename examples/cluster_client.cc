// cluster_client: a program using troupe::cluster::Client. It connects to a running cluster
// (`troupe up -c FILE`), lists the nodes, then prints every membership change until Ctrl-C
// (or for --watch SECONDS).
//
//   cluster_client -c configs/local.yaml [--watch SECONDS]
#include <CLI/CLI.hpp>

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
  CLI::App app("Lists a running cluster's nodes, then prints every membership change until Ctrl-C.",
               "cluster_client");
  app.add_option("-c,--config", config_path, "the cluster file")->required()->type_name("FILE");
  app.add_option("--watch", watch_seconds, "stop after this many seconds")
      ->check(CLI::Range(0, 86400))
      ->type_name("SECONDS");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help: 0; a bad or missing flag (named by CLI11): 2
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
