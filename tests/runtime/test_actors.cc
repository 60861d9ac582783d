// Test actors and codecs.
#include "tests/runtime/test_actors.h"

#include <chrono>
#include <vector>

#include "runtime/error.h"
#include "tests/runtime/test_messages.capnp.h"

namespace troupe::testing {

using runtime::CodecRegistry;
using runtime::RefCodec;

Status AddTestCodecs(CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<Add, wire::Add>(
      kAdd, "Add", [](const Add& m, wire::Add::Builder b, RefCodec&) { b.setN(m.n); },
      [](wire::Add::Reader in, RefCodec&) -> StatusOr<Add> { return Add{in.getN()}; })));
  RETURN_IF_ERROR((r.Add<Get, wire::Get>(
      kGet, "Get", [](const Get&, wire::Get::Builder, RefCodec&) {},
      [](wire::Get::Reader, RefCodec&) -> StatusOr<Get> { return Get{}; })));
  RETURN_IF_ERROR((r.Add<Count, wire::Count>(
      kCount, "Count", [](const Count& m, wire::Count::Builder b, RefCodec&) { b.setValue(m.value); },
      [](wire::Count::Reader in, RefCodec&) -> StatusOr<Count> { return Count{in.getValue()}; })));
  RETURN_IF_ERROR((r.Add<Seq, wire::Seq>(
      kSeq, "Seq", [](const Seq& m, wire::Seq::Builder b, RefCodec&) { b.setN(m.n); },
      [](wire::Seq::Reader in, RefCodec&) -> StatusOr<Seq> { return Seq{in.getN()}; })));
  RETURN_IF_ERROR((r.Add<SeqReport, wire::SeqReport>(
      kSeqReport, "SeqReport", [](const SeqReport&, wire::SeqReport::Builder, RefCodec&) {},
      [](wire::SeqReport::Reader, RefCodec&) -> StatusOr<SeqReport> { return SeqReport{}; })));
  RETURN_IF_ERROR((r.Add<SeqResult, wire::SeqResult>(
      kSeqResult, "SeqResult",
      [](const SeqResult& m, wire::SeqResult::Builder b, RefCodec&) {
        b.setReceived(m.received);
        b.setInOrder(m.in_order);
      },
      [](wire::SeqResult::Reader in, RefCodec&) -> StatusOr<SeqResult> {
        return SeqResult{in.getReceived(), in.getInOrder()};
      })));
  RETURN_IF_ERROR((r.Add<CallVia, wire::CallVia>(
      kCallVia, "CallVia",
      [](const CallVia& m, wire::CallVia::Builder b, RefCodec& refs) {
        refs.EncodeRef(m.target, b.initTarget());
        b.setN(m.n);
      },
      [](wire::CallVia::Reader in, RefCodec& refs) -> StatusOr<CallVia> {
        return CallVia{refs.DecodeRef(in.getTarget()), in.getN()};
      })));
  RETURN_IF_ERROR((r.Add<Quit, wire::Quit>(
      kQuit, "Quit",
      [](const Quit& m, wire::Quit::Builder b, RefCodec&) {
        b.setCode(static_cast<uint8_t>(m.code));
        b.setText(m.text);
      },
      [](wire::Quit::Reader in, RefCodec&) -> StatusOr<Quit> {
        if (in.getCode() > static_cast<uint8_t>(StatusCode::kInternal)) {
          return InvalidArgumentError("Quit: bad status code " + std::to_string(in.getCode()));
        }
        return Quit{static_cast<StatusCode>(in.getCode()), in.getText()};
      })));
  RETURN_IF_ERROR((r.Add<Hold, wire::Hold>(
      kHold, "Hold", [](const Hold&, wire::Hold::Builder, RefCodec&) {},
      [](wire::Hold::Reader, RefCodec&) -> StatusOr<Hold> { return Hold{}; })));
  return r.Add<CounterArgs, wire::CounterArgs>(
      kCounterArgs, "CounterArgs", [](const CounterArgs& m, wire::CounterArgs::Builder b, RefCodec&) { b.setStart(m.start); },
      [](wire::CounterArgs::Reader in, RefCodec&) -> StatusOr<CounterArgs> { return CounterArgs{in.getStart()}; });
}

namespace {

struct CounterState {
  int64_t value = 0;
  uint64_t received = 0;
  uint64_t next = 0;
  bool in_order = true;
  std::vector<caf::response_promise> held;
};

}  // namespace

caf::behavior Counter(caf::event_based_actor* self, int64_t start) {
  auto state = std::make_shared<CounterState>();
  state->value = start;
  return {
      [state](Add& m) { return Count{state->value += m.n}; },
      [state](Get&) { return Count{state->value}; },
      [state](Seq& m) {
        if (m.n != state->next) state->in_order = false;
        state->next = m.n + 1;
        ++state->received;
      },
      [state](SeqReport&) { return SeqResult{state->received, state->in_order}; },
      [self](Quit& m) { self->quit(runtime::ToCafError(Status(m.code, m.text))); },
      [self, state](Hold&) -> caf::result<Count> {
        state->held.push_back(self->make_response_promise());
        return caf::delegated<Count>();
      },
  };
}

caf::behavior Relay(caf::event_based_actor* self) {
  return {
      [self](CallVia& m) -> caf::result<Count> {
        auto rp = self->make_response_promise<Count>();
        if (!m.target.valid()) {
          rp.deliver(runtime::ToCafError(NotFoundError("relay: empty target")));
          return rp;
        }
        self->request(m.target.handle(), std::chrono::seconds(10), Add{m.n})
            .then([rp](Count& c) mutable { rp.deliver(c); },
                  [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
  };
}

StatusOr<SeqResult> AwaitSeq(const runtime::ActorRef& counter, uint64_t n, std::chrono::milliseconds limit) {
  SeqResult result;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  do {
    auto report = counter.Request<SeqResult>(SeqReport{}, std::chrono::seconds(10));
    if (!report.ok()) return report.status();
    result = *report;
  } while (result.received < n && std::chrono::steady_clock::now() < deadline);
  return result;
}

}  // namespace troupe::testing
