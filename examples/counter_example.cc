// counter_example: a counter actor in one process, a client in another, and a monitor that
// reports when the counter's process is killed.
//
//   counter_example                 runs the whole story: starts a server child, counts,
//                                   kills the child with SIGKILL and reports the monitor
//   counter_example --serve         hosts the counter (prints "READY <node id> <address>")
//   counter_example --connect ID@ADDR [--times N]   increments a served counter N times
#include <caf/all.hpp>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <future>
#include <iostream>
#include <string>

#include "common/child_process.h"
#include "common/logging.h"
#include "examples/counter.capnp.h"
#include "runtime/runtime.h"

namespace counter {

struct Increment { int64_t by = 1; };
struct Value { int64_t value = 0; };

}  // namespace counter

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(counter::Increment)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(counter::Value)

namespace {

using namespace std::chrono_literals;
using troupe::Status;
using troupe::StatusOr;
using troupe::runtime::ActorRef;
using troupe::runtime::CodecRegistry;
using troupe::runtime::RefCodec;
using troupe::runtime::Runtime;

constexpr const char* kToken = "counter-example-token";

// Both processes register the same codecs: this is what lets the messages cross.
CodecRegistry Codecs() {
  CodecRegistry codecs;
  Status s = codecs.Add<counter::Increment, counter::wire::Increment>(
      2001, "counter.Increment",
      [](const counter::Increment& m, counter::wire::Increment::Builder b, RefCodec&) { b.setBy(m.by); },
      [](counter::wire::Increment::Reader r, RefCodec&) -> StatusOr<counter::Increment> {
        return counter::Increment{r.getBy()};
      });
  if (s.ok()) {
    s = codecs.Add<counter::Value, counter::wire::Value>(
        2002, "counter.Value",
        [](const counter::Value& m, counter::wire::Value::Builder b, RefCodec&) { b.setValue(m.value); },
        [](counter::wire::Value::Reader r, RefCodec&) -> StatusOr<counter::Value> { return counter::Value{r.getValue()}; });
  }
  if (!s.ok()) std::cerr << "codecs: " << s << "\n";
  return codecs;
}

caf::behavior Counter(caf::event_based_actor*) {
  auto value = std::make_shared<int64_t>(0);
  return {[value](counter::Increment& inc) { return counter::Value{*value += inc.by}; }};
}

StatusOr<std::unique_ptr<Runtime>> StartRuntime(const std::string& name) {
  troupe::runtime::RuntimeConfig config;
  config.node_name = name;
  config.transport.cluster_token = kToken;
  return Runtime::Start(config, Codecs());
}

int Serve() {
  auto rt = StartRuntime("counter-server");
  if (!rt.ok()) {
    std::cerr << "counter_example: " << rt.status() << "\n";
    return 1;
  }
  ActorRef counter = (*rt)->Spawn(Counter);
  if (Status s = (*rt)->RegisterName("counter", counter); !s.ok()) {
    std::cerr << "counter_example: " << s << "\n";
    return 1;
  }
  std::cout << "READY " << (*rt)->node_id() << " " << (*rt)->address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
  }
  return 0;
}

// Looks up the counter on the server node, increments it, and watches it.
int Client(Runtime& rt, troupe::runtime::NodeId server, const std::string& address, int times,
           troupe::ChildProcess* child_to_kill) {
  rt.AddNode(server, address);
  auto counter = rt.LookupName(server, "counter", 5s);
  if (!counter.ok()) {
    std::cerr << "counter_example: lookup failed: " << counter.status() << "\n";
    return 1;
  }
  std::cout << "found " << counter->ToString() << " at " << address << "\n";
  for (int i = 0; i < times; ++i) {
    auto value = counter->Request<counter::Value>(counter::Increment{1}, 5s);
    if (!value.ok()) {
      std::cerr << "counter_example: increment failed: " << value.status() << "\n";
      return 1;
    }
    std::cout << "count = " << value->value << "\n";
  }
  if (child_to_kill == nullptr) return 0;

  std::promise<Status> down;
  auto fired = down.get_future();
  counter->Monitor([&down](const Status& reason) { down.set_value(reason); });
  std::cout << "killing the counter's process (pid " << child_to_kill->pid() << ") with SIGKILL\n";
  auto start = std::chrono::steady_clock::now();
  child_to_kill->Signal(SIGKILL);
  (void)child_to_kill->Wait(5s);
  if (fired.wait_for(10s) != std::future_status::ready) {
    std::cerr << "counter_example: the monitor did not fire\n";
    return 1;
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  std::cout << "monitor: the counter is gone after " << ms << " ms: " << fired.get() << "\n";
  auto after = counter->Request<counter::Value>(counter::Increment{1}, 5s);
  std::cout << "a request now fails at once: " << after.status() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  (void)troupe::InitLogging("warn");
  if (mode == "--serve") return Serve();
  if (mode == "--connect") {
    std::string target = argc > 2 ? argv[2] : "";
    int times = argc > 4 && std::string(argv[3]) == "--times" ? std::stoi(argv[4]) : 3;
    auto at = target.find('@');
    if (at == std::string::npos) {
      std::cerr << "usage: counter_example --connect <node id>@<host:port> [--times N]\n";
      return 2;
    }
    auto rt = StartRuntime("counter-client");
    if (!rt.ok()) {
      std::cerr << "counter_example: " << rt.status() << "\n";
      return 1;
    }
    return Client(**rt, std::stoull(target.substr(0, at)), target.substr(at + 1), times, nullptr);
  }
  if (!mode.empty()) {
    std::cerr << "usage: counter_example [--serve | --connect <node id>@<host:port> [--times N]]\n";
    return 2;
  }
  // The whole story in one command.
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  auto child = troupe::ChildProcess::Spawn({self, "--serve"});
  if (!child.ok()) {
    std::cerr << "counter_example: " << child.status() << "\n";
    return 1;
  }
  auto ready = (*child)->ReadLineWithPrefix("READY ", 20s);
  if (!ready.ok()) {
    std::cerr << "counter_example: the server did not start: " << ready.status() << "\n";
    return 1;
  }
  auto space = ready->find(' ');
  auto server = std::stoull(ready->substr(0, space));
  std::string address = ready->substr(space + 1);
  std::cout << "server process " << (*child)->pid() << " is node " << server << " at " << address << "\n";
  auto rt = StartRuntime("counter-client");
  if (!rt.ok()) {
    std::cerr << "counter_example: " << rt.status() << "\n";
    return 1;
  }
  return Client(**rt, server, address, 3, child->get());
}
