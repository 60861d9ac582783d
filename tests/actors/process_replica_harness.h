// A replica with the process backend in a test's actor system, and what it sends to its owner
// and stream_to (process_backend_test.cc and the e2e test with examples/serving/server.py).
#pragma once

#include <gtest/gtest.h>

#include <caf/all.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "actors/serving/messages.h"
#include "actors/serving/replica.h"
#include "runtime/error.h"

namespace troupe::serving::harness {

/// What the replica sent: state changes and chunks, under a lock, with bounded waits.
struct ReplicaMail {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<ReplicaStateChanged> states;
  std::vector<ResponseChunk> chunks;

  /// Waits until `done()` holds (called under the lock), at most `limit`.
  bool Await(std::chrono::milliseconds limit, const std::function<bool()>& done) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, limit, done);
  }
  /// The first change to `state` (under the lock), or null.
  const ReplicaStateChanged* Find(ReplicaState state) const {
    for (const auto& s : states) {
      if (s.state == state) return &s;
    }
    return nullptr;
  }
  /// The chunks of request `id` in order, concatenated; fails the test on a gap.
  std::string Joined(uint64_t id, size_t* count) {
    std::string out;
    *count = 0;
    for (const auto& c : chunks) {
      if (c.request_id != id) continue;
      EXPECT_EQ(c.index, *count) << "chunk out of order";
      ++*count;
      out += c.data;
    }
    return out;
  }
};

/// One replica with the process backend, its owner and stream_to a mailbox actor.
class ProcessReplicaHarness {
 public:
  explicit ProcessReplicaHarness(std::chrono::milliseconds limit) : limit_(limit) {
    mailbox_ = system_.spawn([mail = mail_](caf::event_based_actor*) -> caf::behavior {
      auto keep = [mail](auto add) {
        std::lock_guard<std::mutex> lock(mail->mu);
        add(*mail);
        mail->cv.notify_all();
      };
      return {
          [keep](ResponseChunk& c) { keep([&](ReplicaMail& m) { m.chunks.push_back(std::move(c)); }); },
          [keep](ReplicaStateChanged& s) { keep([&](ReplicaMail& m) { m.states.push_back(std::move(s)); }); },
      };
    });
  }
  ~ProcessReplicaHarness() {
    if (replica_) caf::anon_send_exit(replica_, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(mailbox_, caf::exit_reason::kill);
  }

  runtime::ActorRef Mailbox() const { return runtime::ActorRef(mailbox_, 1, mailbox_.id()); }

  /// Spawns the replica (owner: the mailbox).
  void Spawn(ProcessBackendConfig process) {
    ReplicaConfig config;
    config.deployment = "d";
    config.name = "d/v1/replica-0";
    config.owner = Mailbox();
    config.process = std::move(process);
    replica_ = SpawnServingReplica(system_, std::move(config));
  }

  /// Waits for the replica to reach `state`; its ReplicaStateChanged, or nullopt past the limit.
  std::optional<ReplicaStateChanged> AwaitState(ReplicaState state) {
    std::optional<ReplicaStateChanged> out;
    mail_->Await(limit_, [&] {
      if (const auto* s = mail_->Find(state)) out = *s;
      return out.has_value();
    });
    return out;
  }

  /// The reply to `req`, or its error.
  StatusOr<InferenceResponse> Call(InferenceRequest req) {
    StatusOr<InferenceResponse> out = DeadlineExceededError("no reply");
    self_->request(replica_, limit_, std::move(req))
        .receive([&](InferenceResponse& r) { out = std::move(r); },
                 [&](caf::error& e) { out = runtime::ToStatus(e); });
    return out;
  }

  /// A request for `path` with `body`; streamed ones stream to the mailbox.
  InferenceRequest Request(uint64_t id, const std::string& path, const std::string& body, bool stream) {
    InferenceRequest req;
    req.id = id;
    req.deployment = "d";
    req.path = path;
    req.body = body;
    req.stream = stream;
    if (stream) req.stream_to = Mailbox();
    return req;
  }

  caf::actor_system& system() { return system_; }
  caf::scoped_actor& self() { return self_; }
  const caf::actor& replica() const { return replica_; }
  std::shared_ptr<ReplicaMail>& mail() { return mail_; }

 private:
  std::chrono::milliseconds limit_;
  caf::actor_system_config config_;
  caf::actor_system system_{config_};
  caf::scoped_actor self_{system_};
  std::shared_ptr<ReplicaMail> mail_ = std::make_shared<ReplicaMail>();
  caf::actor mailbox_;
  caf::actor replica_;
};

}  // namespace troupe::serving::harness
