// Rendezvous store actor, its codecs, its blocking client and the Gloo store adapter.
#include "collectives/rendezvous.h"

#include <caf/all.hpp>
#if defined(TROUPE_HAVE_GLOO)
#include <gloo/common/error.h>
#endif

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "collectives/collectives.capnp.h"
#include "runtime/error.h"

namespace troupe::collectives {

// ---- Codecs ----

Status AddRendezvousCodecs(runtime::CodecRegistry& r) {
  using runtime::RefCodec;
  RETURN_IF_ERROR((r.Add<RendezvousSet, wire::RendezvousSet>(
      kRendezvousSet, "collectives.RendezvousSet",
      [](const RendezvousSet& m, wire::RendezvousSet::Builder b, RefCodec&) {
        b.setKey(m.key);
        b.setValue(kj::arrayPtr(reinterpret_cast<const kj::byte*>(m.value.data()), m.value.size()));
      },
      [](wire::RendezvousSet::Reader in, RefCodec&) -> StatusOr<RendezvousSet> {
        auto value = in.getValue();
        return RendezvousSet{in.getKey(), std::string(reinterpret_cast<const char*>(value.begin()), value.size())};
      })));
  RETURN_IF_ERROR((r.Add<RendezvousSetReply, wire::RendezvousSetReply>(
      kRendezvousSetReply, "collectives.RendezvousSetReply",
      [](const RendezvousSetReply& m, wire::RendezvousSetReply::Builder b, RefCodec&) {
        b.setKeys(m.keys);
        b.setBytes(m.bytes);
        b.setWaiting(m.waiting);
      },
      [](wire::RendezvousSetReply::Reader in, RefCodec&) -> StatusOr<RendezvousSetReply> {
        return RendezvousSetReply{in.getKeys(), in.getBytes(), in.getWaiting()};
      })));
  RETURN_IF_ERROR((r.Add<RendezvousGet, wire::RendezvousGet>(
      kRendezvousGet, "collectives.RendezvousGet",
      [](const RendezvousGet& m, wire::RendezvousGet::Builder b, RefCodec&) {
        auto keys = b.initKeys(static_cast<unsigned>(m.keys.size()));
        for (size_t i = 0; i < m.keys.size(); ++i) keys.set(static_cast<unsigned>(i), m.keys[i]);
        b.setTimeoutMs(m.timeout_ms);
        b.setValues(m.values);
      },
      [](wire::RendezvousGet::Reader in, RefCodec&) -> StatusOr<RendezvousGet> {
        RendezvousGet m;
        m.keys.reserve(in.getKeys().size());
        for (auto key : in.getKeys()) m.keys.emplace_back(key.cStr(), key.size());
        m.timeout_ms = in.getTimeoutMs();
        m.values = in.getValues();
        return m;
      })));
  return r.Add<RendezvousValues, wire::RendezvousValues>(
      kRendezvousValues, "collectives.RendezvousValues",
      [](const RendezvousValues& m, wire::RendezvousValues::Builder b, RefCodec&) {
        auto values = b.initValues(static_cast<unsigned>(m.values.size()));
        for (size_t i = 0; i < m.values.size(); ++i) {
          values.set(static_cast<unsigned>(i),
                     kj::arrayPtr(reinterpret_cast<const kj::byte*>(m.values[i].data()), m.values[i].size()));
        }
      },
      [](wire::RendezvousValues::Reader in, RefCodec&) -> StatusOr<RendezvousValues> {
        RendezvousValues m;
        m.values.reserve(in.getValues().size());
        for (auto value : in.getValues()) {
          m.values.emplace_back(reinterpret_cast<const char*>(value.begin()), value.size());
        }
        return m;
      });
}

// ---- The store actor ----

namespace {

using expire_atom = caf::atom_constant<caf::atom("rdv_expire")>;

// A Get waiting for keys.
struct Waiter {
  std::vector<std::string> keys;
  bool values = true;
  size_t missing = 0;  // keys of `keys` not set yet (distinct)
  uint32_t timeout_ms = 0;
  caf::typed_response_promise<RendezvousValues> promise;
};

struct StoreState {
  RendezvousLimits limits;
  std::unordered_map<std::string, std::string> entries;
  size_t total_bytes = 0;
  uint64_t next_waiter = 1;
  std::unordered_map<uint64_t, Waiter> waiters;
  // Missing key -> the waiters that wait for it (ids of waiters gone since are skipped).
  std::unordered_map<std::string, std::vector<uint64_t>> waiting_on;
  static inline const char* name = "rendezvous_store";
};

using StoreActor = caf::stateful_actor<StoreState>;

std::string QuotedList(const std::vector<std::string>& keys, size_t at_most = 8) {
  std::string out;
  for (size_t i = 0; i < keys.size() && i < at_most; ++i) {
    if (i != 0) out += ", ";
    out += "'" + keys[i] + "'";
  }
  if (keys.size() > at_most) out += " and " + std::to_string(keys.size() - at_most) + " more";
  return out;
}

RendezvousValues Answer(const StoreState& st, const Waiter& w) {
  RendezvousValues reply;
  if (!w.values) return reply;
  reply.values.reserve(w.keys.size());
  for (const auto& key : w.keys) reply.values.push_back(st.entries.at(key));
  return reply;
}

Status CheckKey(const StoreState& st, const std::string& key) {
  if (key.empty()) return InvalidArgumentError("rendezvous store: empty key");
  if (key.size() > st.limits.max_key_bytes) {
    return ResourceExhaustedError("rendezvous store: key of " + std::to_string(key.size()) +
                                  " bytes is above max_key_bytes " + std::to_string(st.limits.max_key_bytes) +
                                  " (RendezvousLimits): use shorter keys");
  }
  return OkStatus();
}

caf::result<RendezvousSetReply> HandleSet(StoreActor* self, RendezvousSet& msg) {
  auto& st = self->state;
  if (Status s = CheckKey(st, msg.key); !s.ok()) return runtime::ToCafError(s);
  if (msg.value.size() > st.limits.max_value_bytes) {
    return runtime::ToCafError(ResourceExhaustedError(
        "rendezvous store: value of '" + msg.key + "' has " + std::to_string(msg.value.size()) +
        " bytes, above max_value_bytes " + std::to_string(st.limits.max_value_bytes) + " (RendezvousLimits)"));
  }
  auto it = st.entries.find(msg.key);
  const size_t old_bytes = it == st.entries.end() ? 0 : msg.key.size() + it->second.size();
  if (it == st.entries.end() && st.entries.size() >= st.limits.max_keys) {
    return runtime::ToCafError(ResourceExhaustedError(
        "rendezvous store: full at max_keys " + std::to_string(st.limits.max_keys) + " (RendezvousLimits); '" +
        msg.key + "' not set"));
  }
  const size_t new_total = st.total_bytes - old_bytes + msg.key.size() + msg.value.size();
  if (new_total > st.limits.max_total_bytes) {
    return runtime::ToCafError(ResourceExhaustedError(
        "rendezvous store: setting '" + msg.key + "' would hold " + std::to_string(new_total) +
        " bytes, above max_total_bytes " + std::to_string(st.limits.max_total_bytes) + " (RendezvousLimits)"));
  }
  st.total_bytes = new_total;
  const bool is_new = it == st.entries.end();
  if (is_new) {
    st.entries.emplace(msg.key, std::move(msg.value));
  } else {
    it->second = std::move(msg.value);
  }
  if (is_new) {
    auto waiting = st.waiting_on.find(msg.key);
    if (waiting != st.waiting_on.end()) {
      std::vector<uint64_t> ids = std::move(waiting->second);
      st.waiting_on.erase(waiting);
      for (uint64_t id : ids) {
        auto w = st.waiters.find(id);
        if (w == st.waiters.end() || --w->second.missing != 0) continue;
        w->second.promise.deliver(Answer(st, w->second));
        st.waiters.erase(w);
      }
    }
  }
  return RendezvousSetReply{static_cast<uint32_t>(st.entries.size()), st.total_bytes,
                            static_cast<uint32_t>(st.waiters.size())};
}

caf::result<RendezvousValues> HandleGet(StoreActor* self, RendezvousGet& msg) {
  auto& st = self->state;
  if (msg.keys.size() > st.limits.max_keys) {
    return runtime::ToCafError(ResourceExhaustedError(
        "rendezvous store: a Get of " + std::to_string(msg.keys.size()) + " keys is above max_keys " +
        std::to_string(st.limits.max_keys) + " (RendezvousLimits)"));
  }
  Waiter w;
  std::vector<std::string> missing;
  for (const auto& key : msg.keys) {
    if (Status s = CheckKey(st, key); !s.ok()) return runtime::ToCafError(s);
    if (st.entries.count(key) == 0 && std::find(missing.begin(), missing.end(), key) == missing.end()) {
      missing.push_back(key);
    }
  }
  w.keys = std::move(msg.keys);
  w.values = msg.values;
  if (missing.empty()) return Answer(st, w);
  if (msg.timeout_ms == 0) {
    return runtime::ToCafError(DeadlineExceededError("rendezvous store: keys not set: " + QuotedList(missing) +
                                                     " (of " + std::to_string(w.keys.size()) + " asked)"));
  }
  if (st.waiters.size() >= st.limits.max_waiting) {
    return runtime::ToCafError(ResourceExhaustedError(
        "rendezvous store: " + std::to_string(st.waiters.size()) + " requests already wait for keys (max_waiting " +
        std::to_string(st.limits.max_waiting) + ", RendezvousLimits)"));
  }
  const uint64_t id = st.next_waiter++;
  w.missing = missing.size();
  w.timeout_ms = msg.timeout_ms;
  w.promise = self->make_response_promise<RendezvousValues>();
  for (const auto& key : missing) st.waiting_on[key].push_back(id);
  auto promise = w.promise;
  st.waiters.emplace(id, std::move(w));
  self->delayed_send(self, std::chrono::milliseconds(msg.timeout_ms), expire_atom::value, id);
  return promise;
}

void Expire(StoreActor* self, uint64_t id) {
  auto& st = self->state;
  auto it = st.waiters.find(id);
  if (it == st.waiters.end()) return;
  Waiter& w = it->second;
  std::vector<std::string> missing;
  for (const auto& key : w.keys) {
    if (st.entries.count(key) == 0 && std::find(missing.begin(), missing.end(), key) == missing.end()) {
      missing.push_back(key);
    }
  }
  w.promise.deliver(runtime::ToCafError(DeadlineExceededError(
      "rendezvous store: keys still not set after " + std::to_string(w.timeout_ms) + " ms: " + QuotedList(missing) +
      " (of " + std::to_string(w.keys.size()) + " asked; " + std::to_string(st.entries.size()) +
      " keys set): a rank did not reach the rendezvous")));
  st.waiters.erase(it);
  // waiting_on keeps the id until its key is set or the store ends: bounded by max_waiting
  // times the keys of one Get, and pruned here for the missing keys.
  for (const auto& key : missing) {
    auto ids = st.waiting_on.find(key);
    if (ids == st.waiting_on.end()) continue;
    auto& v = ids->second;
    v.erase(std::remove(v.begin(), v.end(), id), v.end());
    if (v.empty()) st.waiting_on.erase(ids);
  }
}

caf::behavior RendezvousStore(StoreActor* self, RendezvousLimits limits) {
  self->state.limits = limits;
  // A Get still waiting when the store is ended fails now (a promise dropped unanswered would
  // leave its client waiting for its whole timeout).
  self->set_exit_handler([self](caf::exit_msg& msg) {
    auto& st = self->state;
    const Status why = UnavailableError("rendezvous store ended (" + runtime::ErrorText(msg.reason) +
                                        ") before every key was set: the group's attempt is over");
    for (auto& [id, w] : st.waiters) w.promise.deliver(runtime::ToCafError(why));
    st.waiters.clear();
    st.waiting_on.clear();
    self->quit(msg.reason);
  });
  return {
      [self](RendezvousSet& msg) { return HandleSet(self, msg); },
      [self](RendezvousGet& msg) { return HandleGet(self, msg); },
      [self](expire_atom, uint64_t id) { Expire(self, id); },
  };
}

}  // namespace

caf::actor SpawnRendezvousStore(caf::actor_system& system, RendezvousLimits limits) {
  return system.spawn(RendezvousStore, limits);
}

// ---- The client ----

namespace {

// How much longer than its request's timeout a call waits for the request's answer or error
// before it gives up on its own: that always comes (CAF's request timeout), unless the actor
// system stopped before the request could run.
constexpr std::chrono::milliseconds kAnswerSlack{5000};

// store.Request<Reply>(msg, timeout), or `abort`'s reason as soon as it is raised (at once if it
// was already): the request is sent asynchronously and this thread waits on its answer and the
// signal together. An answer that comes after the abort is dropped.
template <class Reply, class Msg>
StatusOr<Reply> RequestUnlessAborted(const runtime::ActorRef& store, Msg msg, std::chrono::milliseconds timeout,
                                     AbortSignal* abort) {
  if (abort == nullptr) return store.Request<Reply>(std::move(msg), timeout);
  struct Outcome {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<StatusOr<Reply>> result;  // the first of the answer and the abort
  };
  auto outcome = std::make_shared<Outcome>();  // the answer may come after this call returned
  auto finish = [outcome](StatusOr<Reply> result) {
    std::lock_guard<std::mutex> lock(outcome->mu);
    if (!outcome->result) outcome->result = std::move(result);
    outcome->cv.notify_all();
  };
  AbortSignal::Registration registration = abort->OnAbort([finish](const Status& reason) { finish(reason); });
  {
    std::lock_guard<std::mutex> lock(outcome->mu);
    if (outcome->result) return std::move(*outcome->result);  // aborted before
  }
  store.Request<Reply>(std::move(msg), timeout, std::function<void(StatusOr<Reply>)>(finish));
  std::unique_lock<std::mutex> lock(outcome->mu);
  if (!outcome->cv.wait_for(lock, timeout + kAnswerSlack, [&] { return outcome->result.has_value(); })) {
    return DeadlineExceededError("no answer from " + store.ToString() + " within " +
                                 std::to_string((timeout + kAnswerSlack).count()) + " ms");
  }
  return std::move(*outcome->result);
}

}  // namespace

std::vector<std::string> RendezvousClient::Prefixed(const std::vector<std::string>& keys) const {
  if (prefix_.empty()) return keys;
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& key : keys) out.push_back(prefix_ + key);
  return out;
}

StatusOr<RendezvousValues> RendezvousClient::Ask(const std::vector<std::string>& keys,
                                                 std::chrono::milliseconds timeout, bool values) const {
  const auto store_wait = std::clamp<int64_t>(timeout.count(), 0, UINT32_MAX);
  RendezvousGet get{Prefixed(keys), static_cast<uint32_t>(store_wait), values};
  auto reply = RequestUnlessAborted<RendezvousValues>(store_, std::move(get),
                                                      std::chrono::milliseconds(store_wait) + kReplyGrace, abort_.get());
  if (!reply.ok()) {
    return Status(reply.status().code(), reply.status().message() + " (rendezvous store " + store_.ToString() + ")");
  }
  if (values && reply->values.size() != keys.size()) {
    return InternalError("rendezvous store " + store_.ToString() + " answered " +
                         std::to_string(reply->values.size()) + " values for " + std::to_string(keys.size()) +
                         " keys");
  }
  return reply;
}

Status RendezvousClient::Set(const std::string& key, const std::string& value,
                             std::chrono::milliseconds timeout) const {
  auto reply = RequestUnlessAborted<RendezvousSetReply>(store_, RendezvousSet{prefix_ + key, value}, timeout,
                                                        abort_.get());
  if (!reply.ok()) {
    return Status(reply.status().code(),
                  reply.status().message() + " (setting '" + prefix_ + key + "' in rendezvous store " + store_.ToString() + ")");
  }
  return OkStatus();
}

StatusOr<std::vector<std::string>> RendezvousClient::Get(const std::vector<std::string>& keys,
                                                         std::chrono::milliseconds timeout) const {
  auto reply = Ask(keys, timeout, /*values=*/true);
  if (!reply.ok()) return reply.status();
  return std::move(reply->values);
}

StatusOr<std::string> RendezvousClient::Get(const std::string& key, std::chrono::milliseconds timeout) const {
  auto reply = Ask({key}, timeout, /*values=*/true);
  if (!reply.ok()) return reply.status();
  return std::move(reply->values.front());
}

Status RendezvousClient::Wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) const {
  return Ask(keys, timeout, /*values=*/false).status();
}

// ---- The Gloo adapter ----

#if defined(TROUPE_HAVE_GLOO)

GlooRendezvousStore::GlooRendezvousStore(RendezvousClient client, std::chrono::milliseconds timeout)
    : client_(std::move(client)), timeout_(timeout) {}

void GlooRendezvousStore::set(const std::string& key, const std::vector<char>& data) {
  Status s = client_.Set(key, std::string(data.begin(), data.end()));
  if (!s.ok()) throw gloo::IoException(s.ToString());
}

std::vector<char> GlooRendezvousStore::get(const std::string& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = fetched_.find(key);
    if (it != fetched_.end()) {
      std::vector<char> out(it->second.begin(), it->second.end());
      fetched_.erase(it);
      return out;
    }
  }
  auto value = client_.Get(key, timeout_);
  if (!value.ok()) throw gloo::IoException(value.status().ToString());
  return std::vector<char>(value->begin(), value->end());
}

void GlooRendezvousStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void GlooRendezvousStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  // The values come in the same answer (a Gloo key is a rank's pair addresses, ~30 bytes a peer):
  // the get() of each key that follows needs no round trip of its own.
  auto values = client_.Get(keys, timeout);
  if (!values.ok()) throw gloo::IoException(values.status().ToString());
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < keys.size(); ++i) fetched_[keys[i]] = std::move((*values)[i]);
}

#endif  // TROUPE_HAVE_GLOO

}  // namespace troupe::collectives
