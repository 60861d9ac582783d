// runtime_peer: a troupe node for the runtime's multi-process tests. It hosts a counter
// ("counter") and a relay ("relay"), can spawn "counter" for others, optionally hosts the
// directory, and optionally registers its counter in another node's directory. It prints
//   READY <node id> <address> <incarnation>
// and runs until stdin closes or says "quit".
#include <iostream>
#include <string>

#include "common/logging.h"
#include "runtime/directory.h"
#include "runtime/runtime.h"
#include "tests/runtime/test_actors.h"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

int Fail(const std::string& what) {
  std::cerr << "runtime_peer: " << what << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  runtime::RuntimeConfig config;
  bool host_directory = false;
  std::string directory_at;  // "<node id>@<address>"
  std::string log_level = "warn";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--name") config.node_name = value();
    else if (arg == "--node-id") config.node_id = std::stoull(value());
    else if (arg == "--token") config.transport.cluster_token = value();
    else if (arg == "--tls") config.transport.ucx_tls = value();
    else if (arg == "--heartbeat-ms") config.heartbeat_interval = std::chrono::milliseconds(std::stoi(value()));
    else if (arg == "--heartbeat-timeout-ms") config.heartbeat_timeout = std::chrono::milliseconds(std::stoi(value()));
    else if (arg == "--host-directory") host_directory = true;
    else if (arg == "--register-in") directory_at = value();
    else if (arg == "--log-level") log_level = value();
    else return Fail("unknown argument " + arg);
  }
  if (!InitLogging(log_level).ok()) return Fail("bad log level");
  runtime::CodecRegistry codecs;
  if (auto s = testing::AddTestCodecs(codecs); !s.ok()) return Fail(s.ToString());
  auto started = runtime::Runtime::Start(config, std::move(codecs));
  if (!started.ok()) return Fail(started.status().ToString());
  auto& rt = **started;

  auto status = rt.RegisterActorType<testing::CounterArgs>(
      "counter", [](caf::actor_system& sys, const testing::CounterArgs& args) -> StatusOr<caf::actor> {
        return sys.spawn(testing::Counter, args.start);
      });
  if (!status.ok()) return Fail(status.ToString());
  auto counter = rt.Spawn(testing::Counter, int64_t{0});
  auto relay = rt.Spawn(testing::Relay);
  if (auto s = rt.RegisterName("counter", counter); !s.ok()) return Fail(s.ToString());
  if (auto s = rt.RegisterName("relay", relay); !s.ok()) return Fail(s.ToString());
  if (host_directory) {
    if (auto dir = rt.SpawnDirectory(); !dir.ok()) return Fail(dir.status().ToString());
  }
  if (!directory_at.empty()) {
    auto at = directory_at.find('@');
    if (at == std::string::npos) return Fail("--register-in wants <node id>@<address>");
    runtime::NodeId dir_node = std::stoull(directory_at.substr(0, at));
    rt.AddNode(dir_node, directory_at.substr(at + 1));
    auto dir = rt.LookupName(dir_node, runtime::kDirectoryName, 5s);
    if (!dir.ok()) return Fail("directory: " + dir.status().ToString());
    auto entry = dir->Request<runtime::DirectoryEntry>(
        runtime::DirectoryRegister{config.node_name + ".counter", counter}, 5s);
    if (!entry.ok()) return Fail("directory register: " + entry.status().ToString());
  }
  std::cout << "READY " << rt.node_id() << " " << rt.address() << " " << rt.incarnation() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "quit") break;
  }
  rt.Stop();
  return 0;
}
