// ScrapeRegistration.
#include "gateway/scrape_registration.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "cluster/node_agent.h"
#include "common/backoff.h"

namespace troupe::gateway {

namespace {
// One registration's wait for the head; Stop() waits for it at most this long.
constexpr std::chrono::milliseconds kRegisterTimeout{2000};
}  // namespace

struct ScrapeRegistration::State {
  cluster::Client* client = nullptr;
  std::string name;
  std::string metrics_address;
  std::chrono::milliseconds failure_timeout{1000};
  runtime::ActorRef actor;  // the head monitors it: the entry lives as long as it does
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;       // under mu
  bool head_lost = false;  // under mu
  std::atomic<uint64_t> registrations{0};
  std::thread thread;

  // The registration thread: register, watch the head, register again when it is lost.
  void Run(const std::shared_ptr<State>& self) {
    Backoff backoff(cluster::RejoinBackoff(failure_timeout));
    bool warned = false;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stop) return;
        head_lost = false;
      }
      auto registered = client->RegisterGateway(cluster::RegisterGateway{name, metrics_address, actor}, kRegisterTimeout);
      if (!registered.ok()) {
        if (!warned) {
          spdlog::warn("gateway {}: not yet in the head's Prometheus targets ({}); trying again", name,
                       registered.status().ToString());
          warned = true;
        }
        std::unique_lock<std::mutex> lock(mu);
        if (cv.wait_for(lock, backoff.Next(), [this] { return stop; })) return;
        continue;
      }
      if (warned) spdlog::info("gateway {}: in the head's Prometheus targets again", name);
      warned = false;
      backoff.Reset();
      ++registrations;
      std::weak_ptr<State> weak = self;
      client->head().Monitor([weak](const Status&) {
        if (auto st = weak.lock()) {
          std::lock_guard<std::mutex> lock(st->mu);
          st->head_lost = true;
          st->cv.notify_all();
        }
      });
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [this] { return stop || head_lost; });
      if (stop) return;
    }
  }
};

std::unique_ptr<ScrapeRegistration> ScrapeRegistration::Start(cluster::Client* client, std::string name,
                                                               std::string metrics_address,
                                                               std::chrono::milliseconds failure_timeout) {
  std::unique_ptr<ScrapeRegistration> out(new ScrapeRegistration());
  auto st = std::make_shared<State>();
  st->client = client;
  st->name = std::move(name);
  st->metrics_address = std::move(metrics_address);
  st->failure_timeout = failure_timeout;
  st->actor = client->runtime().Spawn([]() -> caf::behavior { return {[](caf::ok_atom) {}}; });
  st->thread = std::thread([st] { st->Run(st); });
  out->state_ = std::move(st);
  return out;
}

ScrapeRegistration::~ScrapeRegistration() { Stop(); }

void ScrapeRegistration::Stop() {
  if (!state_) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->stop) return;
    state_->stop = true;
  }
  state_->cv.notify_all();
  if (state_->thread.joinable()) state_->thread.join();
  // After the thread: no registration can follow the exit.
  caf::anon_send_exit(state_->actor.handle(), caf::exit_reason::user_shutdown);
}

uint64_t ScrapeRegistration::registrations() const { return state_ ? state_->registrations.load() : 0; }

std::string MetricsAddressFor(const std::string& host, uint16_t port) {
  std::string h = host;
  if (h.empty() || h == "0.0.0.0" || h == "::" || h == "[::]") {
    char name[256] = {};
    h = gethostname(name, sizeof name - 1) == 0 && name[0] != '\0' ? std::string(name) : std::string("127.0.0.1");
  }
  const bool v6 = h.find(':') != std::string::npos && h.front() != '[';
  return (v6 ? "[" + h + "]" : h) + ":" + std::to_string(port);
}

}  // namespace troupe::gateway
