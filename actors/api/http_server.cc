// HttpServer: Boost.Beast's request parser over Asio sockets, one strand per connection.
#include "actors/api/http_server.h"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "actors/api/openai.h"

namespace troupe::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

// A read pending during a response takes at most this much at a time, and stops once the bytes
// waiting for the next request exceed max_header_bytes + max_body_bytes (a client that floods
// while its response is pending is then no longer watched for a disconnect).
constexpr size_t kReadChunk = 16 << 10;
// How long a closing connection keeps reading (and discarding) after its last response, so that
// a client still sending a rejected body reads the error instead of a reset (Apache's lingering
// close: 2 s).
constexpr std::chrono::milliseconds kLingerMax{2000};
// Accept errors that are about resources (EMFILE, ENFILE, ENOBUFS) back off before the next
// accept instead of spinning (Go's net/http backs off 5 ms doubling to 1 s the same way).
constexpr std::chrono::milliseconds kAcceptBackoff{50};
// A streamed response whose client reads slower than the handler writes: past this many bytes
// queued the client is treated as gone (the write timeout catches one that stopped reading).
constexpr size_t kMaxQueuedBytes = 64 << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A handler's status outside 200-599 would make a malformed or bodiless response: 500.
http::status StatusOrInternal(unsigned status) {
  return static_cast<http::status>(status >= 200 && status <= 599 ? status : 500);
}

bool HasCrLf(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

// The bytes of a message's head (and body unless header_only), as Beast serializes them.
template <class Message>
std::string Serialize(Message& message, bool header_only) {
  http::serializer<false, typename Message::body_type, typename Message::fields_type> sr(message);
  sr.split(header_only);
  std::string out;
  error_code ec;
  while (!(header_only ? sr.is_header_done() : sr.is_done())) {
    sr.next(ec, [&](error_code& ec2, const auto& buffers) {
      ec2 = {};
      size_t n = 0;
      for (auto b : beast::buffers_range_ref(buffers)) {
        out.append(static_cast<const char*>(b.data()), b.size());
        n += b.size();
      }
      sr.consume(n);
    });
    if (ec) break;  // string and empty bodies do not fail
  }
  return out;
}

}  // namespace

std::string HttpRequest::Header(std::string_view name) const {
  const std::string lower = Lower(name);
  for (const auto& [n, v] : headers) {
    if (n == lower) return v;
  }
  return "";
}

std::string_view HttpRequest::Path() const {
  std::string_view t = target;
  return t.substr(0, t.find('?'));
}

Status ParseListenAddress(std::string_view listen, HttpServerConfig* config) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == listen.size()) {
    return InvalidArgumentError(fmt::format("listen address '{}' is not host:port (e.g. 127.0.0.1:8080, [::1]:0)", listen));
  }
  std::string_view host = listen.substr(0, colon);
  std::string_view port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value > 65535 || host.empty()) {
    return InvalidArgumentError(fmt::format("listen address '{}': the port must be 0-65535 and the host non-empty", listen));
  }
  config->host = std::string(host);
  config->port = static_cast<uint16_t>(value);
  return OkStatus();
}

namespace {
class Connection;
}  // namespace

// Shared by the server and its connections.
struct HttpServer::Impl {
  Impl(HttpServerConfig c, HttpHandler h)
      : config(std::move(c)), handler(std::move(h)), acceptor(asio::make_strand(io)), backoff(acceptor.get_executor()) {}

  HttpServerConfig config;
  HttpHandler handler;
  asio::io_context io;
  tcp::acceptor acceptor;
  asio::steady_timer backoff;  // on the acceptor's strand
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  uint16_t port = 0;

  std::atomic<bool> stopping{false};
  bool stopped = false;  // Stop's caller only

  std::mutex mu;  // guards connections and wakes Stop when active reaches 0
  std::condition_variable drained;
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> connections;
  uint64_t next_id = 0;
  uint64_t active = 0;  // requests read whose response has not ended

  struct Counters {
    std::atomic<uint64_t> open{0}, accepted{0}, refused{0}, requests{0}, bad_request{0}, body_too_large{0},
        header_too_large{0}, read_timeout{0}, idle_closed{0}, client_gone{0}, write_timeout{0};
  } counters;

  void Accept();
  void RequestEnded() {
    std::lock_guard<std::mutex> lock(mu);
    if (--active == 0) drained.notify_all();
  }
};

namespace {

// The responder's state, shared by the handler's side (any thread) and the connection (its
// strand). `mu` orders a handler's posts against the connection closing.
class Responder final : public HttpResponder {
 public:
  // Holds the connection weakly and nothing of Asio's: a responder may outlive the server.
  Responder(std::weak_ptr<Connection> connection, uint64_t seq) : connection_(std::move(connection)), seq_(seq) {}

  void Respond(unsigned status, HttpHeaders headers, std::string body) override;
  void StartStream(unsigned status, HttpHeaders headers) override;
  void Write(std::string data) override;
  void End() override;
  void OnClose(std::function<void()> on_close) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!gone_) {
        if (!ended_) on_close_ = std::move(on_close);
        return;
      }
    }
    on_close();
  }
  bool closed() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return gone_ || ended_ || finished_;
  }

  // The connection's side (its strand).
  void MarkEnded() {
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    on_close_ = nullptr;
  }
  // Sets *cut if the response had not ended; returns OnClose's callback for the caller to run.
  std::function<void()> MarkGone(bool* cut) {
    std::lock_guard<std::mutex> lock(mu_);
    *cut = !gone_ && !ended_;
    gone_ = true;
    return *cut ? std::move(on_close_) : nullptr;
  }

 private:
  // Queues f onto the connection's strand unless the response is over; `last`: f ends it.
  template <class F>
  void Post(F f, bool last = false);

  mutable std::mutex mu_;
  bool gone_ = false;
  bool ended_ = false;
  bool finished_ = false;  // Respond or End was called: later calls do nothing
  std::function<void()> on_close_;
  std::weak_ptr<Connection> connection_;
  uint64_t seq_;  // the request's number on its connection
};

// One client connection. Its state machine (all on its strand):
//   kIdle (waiting for a request's first byte; idle timer) -> kReading (head and body; read
//   timer) -> kHandling (the handler answers; a read stays pending to notice a disconnect;
//   write timer per write) -> kIdle again (keep-alive) or kClosing (last response written,
//   lingering read) -> closed. Errors from kReading answer 400/408/413/431 in kClosing.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  enum class Phase { kIdle, kReading, kHandling, kClosing, kClosed };

  Connection(HttpServer::Impl* server, uint64_t id, tcp::socket socket)
      : server_(server), id_(id), socket_(std::move(socket)), strand_(asio::make_strand(server->io)),
        timer_(strand_) {
    error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    if (!ec) remote_ = fmt::format("{}:{}", ep.address().to_string(), ep.port());
  }

  asio::strand<asio::io_context::executor_type>& strand() { return strand_; }

  void Begin() {
    asio::dispatch(strand_, [self = shared_from_this()] { self->NextRequest(); });
  }

  // From Stop: closes the connection now if no response is in flight.
  void CloseIfIdle() {
    if (phase_ == Phase::kIdle || phase_ == Phase::kReading) Close();
  }

  void Close() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kClosed;
    ++timer_gen_;
    timer_.cancel();
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    std::function<void()> on_close;
    if (responder_) {
      bool cut = false;
      on_close = responder_->MarkGone(&cut);
      if (cut) server_->counters.client_gone++;
      responder_.reset();
      server_->RequestEnded();
    }
    out_.clear();
    server_->counters.open--;
    {
      std::lock_guard<std::mutex> lock(server_->mu);
      server_->connections.erase(id_);
    }
    if (on_close) on_close();
  }

  // The responder's calls, on the strand.
  // `seq` is the request's number: calls for an earlier request of the connection do nothing.
  void DoRespond(uint64_t seq, unsigned status, HttpHeaders headers, std::string body) {
    if (seq != seq_ || phase_ != Phase::kHandling || answered_) return;
    answered_ = true;
    http::response<http::string_body> res{StatusOrInternal(status), 11};
    SetHeaders(res, headers);
    // 204 and 304 have no body (Beast refuses to frame one).
    if (res.result_int() != 204 && res.result_int() != 304) res.body() = std::move(body);
    res.prepare_payload();
    res.keep_alive(KeepAlive());
    // A HEAD request gets the head alone, with the length the body would have (RFC 9110 9.3.2).
    Enqueue(Serialize(res, head_request_));
    end_pending_ = true;
    MaybeFlush();
  }
  void DoStartStream(uint64_t seq, unsigned status, HttpHeaders headers) {
    if (seq != seq_ || phase_ != Phase::kHandling || answered_) return;
    answered_ = true;
    streaming_ = true;
    http::response<http::empty_body> res{StatusOrInternal(status), 11};
    SetHeaders(res, headers);
    res.chunked(true);
    res.keep_alive(KeepAlive());
    Enqueue(Serialize(res, true));
    MaybeFlush();
  }
  void DoWrite(uint64_t seq, std::string data) {
    if (seq != seq_ || phase_ != Phase::kHandling || !streaming_ || end_pending_ || data.empty()) return;
    if (queued_bytes_ + data.size() > kMaxQueuedBytes) {
      server_->counters.write_timeout++;
      return Close();
    }
    Enqueue(fmt::format("{:x}\r\n", data.size()));
    Enqueue(std::move(data));
    Enqueue("\r\n");
    MaybeFlush();
  }
  void DoEnd(uint64_t seq) {
    if (seq != seq_ || phase_ != Phase::kHandling || !streaming_ || end_pending_) return;
    Enqueue("0\r\n\r\n");
    end_pending_ = true;
    MaybeFlush();
  }

 private:
  const HttpServerConfig& config() const { return server_->config; }

  bool KeepAlive() const { return keep_alive_ && !server_->stopping.load(); }

  template <class Message>
  static void SetHeaders(Message& res, const HttpHeaders& headers) {
    for (const auto& [name, value] : headers) {
      if (name.empty() || HasCrLf(name) || HasCrLf(value)) continue;  // no header injection
      res.insert(name, value);
    }
  }

  // Timers carry a generation: an expiry queued before a re-arm or cancel is ignored.
  void ArmTimer(std::chrono::milliseconds after, void (Connection::*on_expiry)()) {
    const uint64_t gen = ++timer_gen_;
    timer_.expires_after(after);
    timer_.async_wait([self = shared_from_this(), gen, on_expiry](error_code ec) {
      if (ec || gen != self->timer_gen_ || self->phase_ == Phase::kClosed) return;
      (self.get()->*on_expiry)();
    });
  }
  void DisarmTimer() {
    ++timer_gen_;
    timer_.cancel();
  }

  // ---- reading ----

  void NextRequest() {
    if (phase_ == Phase::kClosed) return;
    if (server_->stopping.load()) return Close();
    phase_ = Phase::kIdle;
    if (buffer_.size() > 0) {
      if (reading_) {
        // The watch read is pending but a request is already buffered: cancel the read, and
        // its completion (aborted, phase kIdle) starts the request.
        error_code ec;
        socket_.cancel(ec);
        return;
      }
      return ReadHead();
    }
    ArmTimer(config().idle_timeout, &Connection::OnIdleTimeout);
    if (!reading_) ReadSome();
  }

  void OnIdleTimeout() {
    server_->counters.idle_closed++;
    Close();
  }

  // Reads whatever arrives into buffer_: the first byte of a request (kIdle), a disconnect or
  // early bytes while a response is pending (kHandling), or bytes to discard (kClosing).
  void ReadSome() {
    reading_ = true;
    socket_.async_read_some(buffer_.prepare(kReadChunk), asio::bind_executor(strand_,
        [self = shared_from_this()](error_code ec, size_t n) { self->OnReadSome(ec, n); }));
  }

  void OnReadSome(error_code ec, size_t n) {
    reading_ = false;
    buffer_.commit(n);
    switch (phase_) {
      case Phase::kClosed:
        return;
      case Phase::kIdle:
        if (ec && ec != asio::error::operation_aborted) return Close();  // EOF, reset
        if (buffer_.size() == 0) return ReadSome();
        return ReadHead();
      case Phase::kHandling:
        if (ec == asio::error::operation_aborted) return;
        if (ec) return Close();  // the client went (FIN or RST) before its response ended
        if (buffer_.size() < config().max_header_bytes + config().max_body_bytes) ReadSome();
        return;
      case Phase::kClosing:
        if (ec) return Close();
        buffer_.consume(buffer_.size());
        return ReadSome();
      case Phase::kReading:
        return;  // cannot happen: kReading starts only without a pending ReadSome
    }
  }

  void ReadHead() {
    phase_ = Phase::kReading;
    timed_out_ = false;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(std::min<uint64_t>(config().max_header_bytes, UINT32_MAX)));
    parser_->body_limit(config().max_body_bytes);
    ArmTimer(config().read_timeout, &Connection::OnReadTimeout);
    http::async_read_header(socket_, buffer_, *parser_, asio::bind_executor(strand_,
        [self = shared_from_this()](error_code ec, size_t) { self->OnHead(ec); }));
  }

  void OnReadTimeout() {
    timed_out_ = true;
    error_code ec;
    socket_.cancel(ec);
  }

  void OnHead(error_code ec) {
    if (phase_ == Phase::kClosed) return;
    if (ec) return ReadFailed(ec);
    // curl and others wait for "100 Continue" before a large body.
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue") && !parser_->is_done()) {
      auto cont = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      asio::async_write(socket_, asio::buffer(*cont), asio::bind_executor(strand_,
          [self = shared_from_this(), cont](error_code ec, size_t) {
            if (self->phase_ == Phase::kClosed) return;
            if (ec) return self->ReadFailed(ec);
            self->ReadBody();
          }));
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(socket_, buffer_, *parser_, asio::bind_executor(strand_,
        [self = shared_from_this()](error_code ec, size_t) { self->OnRequest(ec); }));
  }

  void ReadFailed(error_code ec) {
    DisarmTimer();
    auto& c = server_->counters;
    if (timed_out_) {
      c.read_timeout++;
      return Reject(408, fmt::format("the request did not arrive within {} ms (head and body)",
                                     config().read_timeout.count()));
    }
    if (ec == http::error::body_limit) {
      c.body_too_large++;
      return Reject(413, fmt::format("the request body is larger than the limit of {} bytes",
                                     config().max_body_bytes));
    }
    if (ec == http::error::header_limit) {
      c.header_too_large++;
      return Reject(431, fmt::format("the request head (request line and headers) is larger than the limit of {} bytes",
                                     config().max_header_bytes));
    }
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream &&
        ec != http::error::partial_message) {
      c.bad_request++;
      return Reject(400, fmt::format("malformed HTTP request: {}", ec.message()));
    }
    Close();  // end of stream, reset, a partial message cut by the client: nobody to answer
  }

  // Answers bad input itself and closes the connection.
  void Reject(unsigned status, std::string message) {
    phase_ = Phase::kHandling;
    answered_ = false;
    streaming_ = false;
    end_pending_ = false;
    keep_alive_ = false;
    head_request_ = false;
    DoRespond(seq_, status, {{"content-type", "application/json"}},
              OpenAiError::ForStatus(status, std::move(message)).Json());
  }

  void OnRequest(error_code ec) {
    if (phase_ == Phase::kClosed) return;
    if (ec) return ReadFailed(ec);
    DisarmTimer();
    auto message = parser_->release();
    parser_.reset();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.body = std::move(message.body());
    request.remote = remote_;
    request.headers.reserve(std::distance(message.begin(), message.end()));
    for (const auto& field : message) {
      const auto name = field.name_string();
      request.headers.emplace_back(Lower(std::string_view(name.data(), name.size())), std::string(field.value()));
    }
    keep_alive_ = message.keep_alive();
    head_request_ = message.method() == http::verb::head;

    phase_ = Phase::kHandling;
    answered_ = streaming_ = end_pending_ = false;
    ++seq_;
    auto responder = std::make_shared<Responder>(weak_from_this(), seq_);
    responder_ = responder;
    {
      std::lock_guard<std::mutex> lock(server_->mu);
      ++server_->active;
    }
    server_->counters.requests++;
    if (!reading_ && buffer_.size() < config().max_header_bytes + config().max_body_bytes) ReadSome();
    try {
      server_->handler(std::move(request), std::move(responder));
    } catch (const std::exception& e) {
      spdlog::error("http server: the handler threw for a request from {}: {}", remote_, e.what());
      DoRespond(seq_, 500, {{"content-type", "application/json"}},
                OpenAiError::ForStatus(500, "the gateway failed on this request (see its log)").Json());
    }
  }

  // ---- writing ----

  void Enqueue(std::string bytes) {
    queued_bytes_ += bytes.size();
    out_.push_back(std::move(bytes));
  }

  void MaybeFlush() {
    if (writing_ || phase_ == Phase::kClosed) return;
    if (out_.empty()) {
      if (end_pending_) ResponseEnded();
      return;
    }
    writing_ = true;
    in_flight_.clear();
    while (!out_.empty()) {
      in_flight_.push_back(std::move(out_.front()));
      out_.pop_front();
    }
    queued_bytes_ = 0;
    std::vector<asio::const_buffer> buffers;
    buffers.reserve(in_flight_.size());
    for (const auto& s : in_flight_) buffers.push_back(asio::buffer(s));
    // An error answer to a closing client is bounded like its request was.
    ArmTimer(keep_alive_ ? config().write_timeout : std::min(config().write_timeout, config().read_timeout),
             &Connection::OnWriteTimeout);
    asio::async_write(socket_, buffers, asio::bind_executor(strand_,
        [self = shared_from_this()](error_code ec, size_t) { self->OnWritten(ec); }));
  }

  void OnWriteTimeout() {
    server_->counters.write_timeout++;
    Close();
  }

  void OnWritten(error_code ec) {
    writing_ = false;
    if (phase_ == Phase::kClosed) return;
    DisarmTimer();
    if (ec) return Close();
    MaybeFlush();
  }

  void ResponseEnded() {
    end_pending_ = false;
    if (responder_) {
      responder_->MarkEnded();
      responder_.reset();
      server_->RequestEnded();
    }
    if (KeepAlive()) return NextRequest();
    // Lingering close: no more responses; read and discard what the client still sends until
    // it closes or kLingerMax passes, so that it reads the response rather than a reset.
    phase_ = Phase::kClosing;
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    ArmTimer(std::min(kLingerMax, config().read_timeout), &Connection::Close);
    if (!reading_) ReadSome();
  }

  HttpServer::Impl* server_;
  uint64_t id_;
  tcp::socket socket_;
  asio::strand<asio::io_context::executor_type> strand_;
  asio::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  std::string remote_;
  Phase phase_ = Phase::kIdle;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool reading_ = false;    // a ReadSome is pending
  bool timed_out_ = false;  // the read timer cancelled the request's read
  bool keep_alive_ = true;
  bool head_request_ = false;
  uint64_t seq_ = 0;  // requests read on this connection
  // The response in flight.
  std::shared_ptr<Responder> responder_;
  bool answered_ = false;
  bool streaming_ = false;
  bool end_pending_ = false;  // everything queued; the response ends when out_ drains
  std::deque<std::string> out_;
  std::vector<std::string> in_flight_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
};

template <class F>
void Responder::Post(F f, bool last) {
  std::lock_guard<std::mutex> lock(mu_);
  if (gone_ || ended_ || finished_) return;
  finished_ = last;
  auto connection = connection_.lock();
  if (!connection) return;
  auto& strand = connection->strand();
  asio::post(strand, [connection = std::move(connection), f = std::move(f)]() mutable { f(*connection); });
}

void Responder::Respond(unsigned status, HttpHeaders headers, std::string body) {
  Post([seq = seq_, status, headers = std::move(headers), body = std::move(body)](Connection& c) mutable {
    c.DoRespond(seq, status, std::move(headers), std::move(body));
  }, /*last=*/true);
}
void Responder::StartStream(unsigned status, HttpHeaders headers) {
  Post([seq = seq_, status, headers = std::move(headers)](Connection& c) mutable {
    c.DoStartStream(seq, status, std::move(headers));
  });
}
void Responder::Write(std::string data) {
  if (data.empty()) return;
  Post([seq = seq_, data = std::move(data)](Connection& c) mutable { c.DoWrite(seq, std::move(data)); });
}
void Responder::End() {
  Post([seq = seq_](Connection& c) { c.DoEnd(seq); }, /*last=*/true);
}

}  // namespace

void HttpServer::Impl::Accept() {
  acceptor.async_accept(io, [this](error_code ec, tcp::socket socket) {
    if (stopping.load() || !acceptor.is_open()) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      spdlog::warn("http server: accept failed ({}); retrying in {} ms", ec.message(), kAcceptBackoff.count());
      backoff.expires_after(kAcceptBackoff);
      backoff.async_wait([this](error_code ec2) {
        if (!ec2 && !stopping.load()) Accept();
      });
      return;
    }
    counters.accepted++;
    if (config.max_connections != 0 && counters.open.load() >= config.max_connections) {
      counters.refused++;
      error_code ignored;
      socket.close(ignored);
      return Accept();
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);  // each SSE event goes out at once
    counters.open++;
    std::shared_ptr<Connection> connection;
    {
      std::lock_guard<std::mutex> lock(mu);
      const uint64_t id = next_id++;
      connection = std::make_shared<Connection>(this, id, std::move(socket));
      connections.emplace(id, connection);
    }
    connection->Begin();
    Accept();
  });
}

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerConfig config, HttpHandler handler) {
  if (!handler) return InvalidArgumentError("HttpServer::Start: no handler given");
  if (config.io_threads == 0) config.io_threads = 1;
  if (config.max_header_bytes == 0 || config.read_timeout.count() <= 0 || config.idle_timeout.count() <= 0 ||
      config.write_timeout.count() <= 0) {
    return InvalidArgumentError("HttpServer::Start: max_header_bytes and the read, idle and write timeouts must be positive");
  }
  error_code ec;
  auto address = asio::ip::make_address(config.host, ec);
  if (ec) {
    return InvalidArgumentError(fmt::format("HTTP listen host '{}' is not an IP address ({}); give one, e.g. 127.0.0.1 or 0.0.0.0",
                                            config.host, ec.message()));
  }
  auto impl = std::make_shared<Impl>(config, std::move(handler));
  const tcp::endpoint endpoint(address, config.port);
  auto fail = [&](const char* what) -> Status {
    return UnavailableError(fmt::format("HTTP server cannot {} {}:{}: {}; pick another listen address or free the port",
                                        what, config.host, config.port, ec.message()));
  };
  impl->acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("open a socket for");
  impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  impl->acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen on");
  impl->port = impl->acceptor.local_endpoint(ec).port();
  impl->work.emplace(impl->io.get_executor());
  asio::dispatch(impl->acceptor.get_executor(), [raw = impl.get()] { raw->Accept(); });
  for (uint32_t i = 0; i < config.io_threads; ++i) {
    impl->threads.emplace_back([raw = impl.get()] { raw->io.run(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::Stop() {
  Impl& s = *impl_;
  if (s.stopped) return;
  s.stopped = true;
  s.stopping.store(true);
  asio::post(s.acceptor.get_executor(), [&s] {
    error_code ignored;
    s.acceptor.close(ignored);
    s.backoff.cancel();
  });
  auto each_connection = [&s](auto f) {
    std::vector<std::shared_ptr<Connection>> live;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      for (auto& [id, weak] : s.connections) {
        if (auto c = weak.lock()) live.push_back(std::move(c));
      }
    }
    for (auto& c : live) asio::post(c->strand(), [c, f] { f(*c); });
  };
  // Idle connections go at once; responses in flight get stop_grace to end.
  each_connection([](Connection& c) { c.CloseIfIdle(); });
  {
    std::unique_lock<std::mutex> lock(s.mu);
    s.drained.wait_for(lock, s.config.stop_grace, [&s] { return s.active == 0; });
  }
  each_connection([](Connection& c) { c.Close(); });
  s.work.reset();
  // Every connection is closed or closing: their pending operations complete (aborted) and the
  // threads run out of work. A connection accepted just now sees `stopping` and closes.
  for (auto& t : s.threads) t.join();
  s.threads.clear();
}

HttpServerStats HttpServer::stats() const {
  const auto& c = impl_->counters;
  HttpServerStats s;
  s.connections_open = c.open.load();
  s.connections_accepted = c.accepted.load();
  s.connections_refused = c.refused.load();
  s.requests = c.requests.load();
  s.bad_request = c.bad_request.load();
  s.body_too_large = c.body_too_large.load();
  s.header_too_large = c.header_too_large.load();
  s.read_timeout = c.read_timeout.load();
  s.idle_closed = c.idle_closed.load();
  s.client_gone = c.client_gone.load();
  s.write_timeout = c.write_timeout.load();
  return s;
}

}  // namespace troupe::api
