// Pins the CAF 0.17.6 behaviour that troupe's runtime bridge (issue: location-transparent
// actors) builds on: what a forwarding_actor_proxy hands its bridge, how replies route
// back, what monitoring a proxy does, and what kill_proxy does and does not do. If a CAF
// upgrade changes any of this, these tests say so before the bridge misbehaves.
#include <caf/all.hpp>
#include <caf/forwarding_actor_proxy.hpp>
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace troupe {
namespace {

using namespace std::chrono_literals;

// What the test bridge saw, guarded by a mutex (the bridge runs on CAF's scheduler).
struct BridgeLog {
  std::mutex mu;
  std::vector<std::string> forwarded;   // message contents
  std::vector<caf::actor_id> destinations;
  std::vector<bool> was_request;
  int monitor_requests = 0;
};

caf::actor_system_config& SharingConfig(caf::actor_system_config& cfg) {
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("scheduler.max-threads", 2);
  return cfg;
}

class CafProxyContract : public ::testing::Test {
 protected:
  CafProxyContract() : system_(SharingConfig(config_)) {}

  void SetUp() override {
    BridgeLog* log = &log_;
    bridge_ = system_.spawn([log](caf::event_based_actor* self) -> caf::behavior {
      return {
          [=](caf::forward_atom, caf::strong_actor_ptr& src, std::vector<caf::strong_actor_ptr>&,
              caf::strong_actor_ptr& dest, caf::message_id mid, caf::message& msg) {
            {
              std::lock_guard<std::mutex> lock(log->mu);
              log->forwarded.push_back(caf::to_string(msg));
              log->destinations.push_back(dest->id());
              log->was_request.push_back(mid.is_request());
            }
            if (mid.is_request() && src) {
              // As the remote actor's answer would be delivered: to the requester, with the
              // response id and the proxy as sender.
              src->enqueue(caf::make_mailbox_element(dest, mid.response_id(), {},
                                                     caf::make_message(std::string("pong"))),
                           self->context());
            }
          },
          [=](caf::monitor_atom, caf::strong_actor_ptr&) {
            std::lock_guard<std::mutex> lock(log->mu);
            ++log->monitor_requests;
          },
      };
    });
    auto node = caf::make_node_id(4242, "0123456789012345678901234567890123456789");
    ASSERT_TRUE(node);
    caf::actor_config actor_cfg;
    proxy_ = caf::make_actor<caf::forwarding_actor_proxy, caf::strong_actor_ptr>(kRemoteId, *node, &system_,
                                                                                actor_cfg, bridge_);
    remote_ = caf::actor_cast<caf::actor>(proxy_);
  }

  void TearDown() override { caf::anon_send_exit(bridge_, caf::exit_reason::user_shutdown); }

  // Waits (bounded) until the bridge has seen `n` forwarded messages.
  bool WaitForwarded(size_t n) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(log_.mu);
        if (log_.forwarded.size() >= n) return true;
      }
      std::this_thread::yield();
    }
    return false;
  }

  static constexpr caf::actor_id kRemoteId = 7;
  caf::actor_system_config config_;
  caf::actor_system system_;
  BridgeLog log_;
  caf::actor bridge_;
  caf::strong_actor_ptr proxy_;
  caf::actor remote_;
};

TEST_F(CafProxyContract, SendToAProxyReachesTheBridgeAsForwardAtomWithTheRemoteId) {
  caf::scoped_actor self{system_};
  self->send(remote_, int32_t{42});
  ASSERT_TRUE(WaitForwarded(1)) << "the bridge never saw the message";
  std::lock_guard<std::mutex> lock(log_.mu);
  EXPECT_EQ(log_.forwarded[0], "(42)");
  EXPECT_EQ(log_.destinations[0], kRemoteId);
  EXPECT_FALSE(log_.was_request[0]);
}

TEST_F(CafProxyContract, AReplyEnqueuedWithTheResponseIdReachesTheRequester) {
  caf::scoped_actor self{system_};
  std::string reply;
  self->request(remote_, 5s, std::string("ping"))
      .receive([&](const std::string& s) { reply = s; },
               [&](caf::error& e) { reply = "error: " + caf::to_string(e); });
  EXPECT_EQ(reply, "pong");
  std::lock_guard<std::mutex> lock(log_.mu);
  ASSERT_EQ(log_.was_request.size(), 1u);
  EXPECT_TRUE(log_.was_request[0]);
}

TEST_F(CafProxyContract, CreatingAProxyAsksTheBridgeToMonitorTheRemoteActor) {
  // make_actor<forwarding_actor_proxy> sends (monitor_atom, proxy) to its bridge: the
  // bridge learns of every proxy and must watch the remote actor (remote monitoring),
  // whether or not a local actor ever monitors the proxy.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  int seen = 0;
  while (seen == 0 && std::chrono::steady_clock::now() < deadline) {
    std::lock_guard<std::mutex> lock(log_.mu);
    seen = log_.monitor_requests;
  }
  EXPECT_EQ(seen, 1) << "no (monitor_atom, proxy) from proxy creation";
  // A local monitor on the proxy adds nothing for the bridge: it is kept by the proxy.
  caf::scoped_actor self{system_};
  self->monitor(remote_);
  self->send(remote_, int32_t{1});  // a marker that arrives after anything monitor() sent
  ASSERT_TRUE(WaitForwarded(1));
  std::lock_guard<std::mutex> lock(log_.mu);
  EXPECT_EQ(log_.monitor_requests, 1);
}

TEST_F(CafProxyContract, KillProxyFiresMonitorsWithTheGivenReason) {
  caf::scoped_actor self{system_};
  self->monitor(remote_);
  auto* proxy = static_cast<caf::actor_proxy*>(caf::actor_cast<caf::abstract_actor*>(proxy_));
  proxy->kill_proxy(nullptr, caf::make_error(caf::exit_reason::remote_link_unreachable));
  caf::error reason;
  bool fired = false;
  self->receive([&](caf::down_msg& dm) {
                  fired = true;
                  reason = dm.reason;
                },
                caf::after(5s) >> [] {});
  ASSERT_TRUE(fired) << "down_msg did not arrive after kill_proxy";
  EXPECT_EQ(reason, caf::make_error(caf::exit_reason::remote_link_unreachable));
}

TEST_F(CafProxyContract, RequestsToAKilledProxyAreNotFailedByCafItself) {
  // CAF drops what reaches a killed forwarding proxy: no error reply. The runtime must
  // fail pending and new requests to a lost node itself (Unavailable, fast).
  auto* proxy = static_cast<caf::actor_proxy*>(caf::actor_cast<caf::abstract_actor*>(proxy_));
  proxy->kill_proxy(nullptr, caf::make_error(caf::exit_reason::remote_link_unreachable));
  caf::scoped_actor self{system_};
  caf::error error;
  self->request(remote_, 200ms, std::string("again"))
      .receive([](const std::string&) {}, [&](caf::error& e) { error = e; });
  EXPECT_EQ(error, caf::make_error(caf::sec::request_timeout))
      << "CAF now fails requests to killed proxies itself: " << caf::to_string(error);
}

}  // namespace
}  // namespace troupe
