// Test actors and their messages, shared by runtime unit tests, the runtime integration tests
// and their peer process: a counter (which also checks sequences, quits on request and can
// hold a request unanswered) and a relay (which calls another actor through a ref it was sent).
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"

namespace troupe::testing {

struct Add { int64_t n = 0; };
struct Get {};
struct Count { int64_t value = 0; };
struct Seq { uint64_t n = 0; };
struct SeqReport {};
struct SeqResult { uint64_t received = 0; bool in_order = true; };
struct CallVia { runtime::ActorRef target; int64_t n = 0; };
struct Quit { StatusCode code = StatusCode::kInternal; std::string text; };
struct Hold {};
struct CounterArgs { int64_t start = 0; };

/// Type ids of the test messages (1000 + n).
enum TestTypeId : uint32_t {
  kAdd = 1001, kGet, kCount, kSeq, kSeqReport, kSeqResult, kCallVia, kQuit, kHold, kCounterArgs,
};

/// Registers the codecs of every message above.
Status AddTestCodecs(runtime::CodecRegistry& registry);

/// A counter starting at `start`: Add -> Count, Get -> Count, Seq (one-way, checks order),
/// SeqReport -> SeqResult, Quit -> exits with that status, Hold -> never answered.
caf::behavior Counter(caf::event_based_actor* self, int64_t start);
/// CallVia{target, n} -> asks target for Add{n} and replies with its Count.
caf::behavior Relay(caf::event_based_actor* self);

/// Asks `counter` (a Counter) for its SeqResult until it has received `n` Seq messages or
/// `limit` has passed; the last result, or the error of a request that failed.
StatusOr<SeqResult> AwaitSeq(const runtime::ActorRef& counter, uint64_t n, std::chrono::milliseconds limit);

}  // namespace troupe::testing

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Add)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Get)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Count)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Seq)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::SeqReport)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::SeqResult)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::CallVia)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Quit)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::Hold)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::testing::CounterArgs)
