// rendezvous_peer: one rank of a group formed through a rendezvous store on another node, for
// rendezvous_process_test. It starts a Runtime, forms the group (rendezvous_group.h), prints
//   READY <node id> <address>        once its runtime is up (hosting a spare store too)
//   GROUP <rank>                     once the group is formed (or ERROR <status>)
// and then runs commands from stdin, one a line:
//   allreduce N   sums N float32 elements of value rank+1: ALLREDUCE <status> <first> <last>
//   block         one allreduce that waits for a rank that never issues it: ISSUED, then
//                 FAILED <steady clock ns at the failure> <status>
//   quit          (or end of input) exits.
#include <time.h>

#include <iostream>
#include <string>
#include <vector>

#include "common/logging.h"
#include "tests/collectives/rendezvous_group.h"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

int Fail(const std::string& what) {
  std::cout << "ERROR " << what << std::endl;
  return 2;
}

int64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  runtime::RuntimeConfig config;
  int rank = -1, world = 0;
  runtime::NodeId store_node = 0;
  std::string store_address;
  bool gloo = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--rank") rank = std::stoi(value());
    else if (arg == "--world") world = std::stoi(value());
    else if (arg == "--node-id") config.node_id = std::stoull(value());
    else if (arg == "--token") config.transport.cluster_token = value();
    else if (arg == "--store-node") store_node = std::stoull(value());
    else if (arg == "--store-address") store_address = value();
    else if (arg == "--heartbeat-ms") config.heartbeat_interval = std::chrono::milliseconds(std::stoi(value()));
    else if (arg == "--heartbeat-timeout-ms") config.heartbeat_timeout = std::chrono::milliseconds(std::stoi(value()));
    else if (arg == "--backend") gloo = value() == "gloo";
    else return Fail("unknown argument " + arg);
  }
  if (!InitLogging("warn").ok()) return Fail("bad log level");
  config.node_name = "rank-" + std::to_string(rank);
  runtime::CodecRegistry codecs;
  if (auto s = collectives::AddRendezvousCodecs(codecs); !s.ok()) return Fail(s.ToString());
  auto started = runtime::Runtime::Start(config, std::move(codecs));
  if (!started.ok()) return Fail(started.status().ToString());
  auto& rt = **started;
  std::cout << "READY " << rt.node_id() << " " << rt.address() << std::endl;

  // A spare store of this node's own (rendezvous_process_test asks one whose node it kills).
  auto spare = rt.Ref(collectives::SpawnRendezvousStore(rt.system()));
  if (auto s = rt.RegisterName(collectives::testing::kStoreName, spare); !s.ok()) return Fail(s.ToString());
  rt.AddNode(store_node, store_address);
  auto store = rt.LookupName(store_node, collectives::testing::kStoreName, 10s);
  if (!store.ok()) return Fail(store.status().ToString());
  auto member = collectives::testing::FormGroup(rt, *store, rank, world, gloo, 15s);
  if (!member.ok()) return Fail(member.status().ToString());
  std::cout << "GROUP " << rank << std::endl;

  collectives::Communicator& comm = *(*member)->communicator;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string command;
    in >> command;
    if (command == "allreduce") {
      size_t n = 0;
      in >> n;
      std::vector<float> data(n, static_cast<float>(rank + 1));
      Status s = comm.AllReduce(data.data(), n, collectives::DataType::kFloat32, collectives::ReduceOp::kSum, 30s).Wait();
      std::cout << "ALLREDUCE " << (s.ok() ? "OK" : s.ToString()) << " " << (n ? data.front() : 0) << " "
                << (n ? data.back() : 0) << std::endl;
    } else if (command == "block") {
      float x = 1;
      auto work = comm.AllReduce(&x, 1, collectives::DataType::kFloat32, collectives::ReduceOp::kSum, 60s);
      std::cout << "ISSUED" << std::endl;
      Status s = work.Wait();
      std::cout << "FAILED " << MonotonicNs() << " " << s.ToString() << std::endl;
    } else if (command == "quit") {
      break;
    }
  }
  member->reset();
  caf::anon_send_exit(spare.handle(), caf::exit_reason::user_shutdown);
  rt.Stop();
  rt.AwaitActors(5000ms);
  return 0;
}
