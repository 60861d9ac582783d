// HttpServer against real sockets on 127.0.0.1 (port 0): keep-alive, streaming, the limits and
// the hostile clients of issue 21 (huge heads and bodies, slowloris, bad request lines,
// disconnects mid-stream), and Stop with connections open. No actors; every wait is bounded.
#include "actors/api/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

namespace troupe::api {
namespace {

namespace http = boost::beast::http;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kWait{5000};  // the bound on every wait; none should come near it

// A blocking client on a raw socket, so that a test can send anything, byte by byte, and
// every read has a deadline.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() { Close(); }
  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // Waits up to `timeout` for bytes; appends them to pending_. False on timeout; sets eof_.
  bool ReadMore(milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    char buf[16384];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    pending_.append(buf, static_cast<size_t>(n));
    return true;
  }

  // Reads until `needle` is in what came so far (kept for the next call). False at the deadline.
  bool ReadUntil(const std::string& needle, milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    while (pending_.find(needle) == std::string::npos) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !ReadMore(left)) return false;
    }
    return true;
  }

  // One whole response (chunked bodies de-chunked), or nullopt at the deadline or close.
  std::optional<http::response<http::string_body>> ReadResponse(milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(64 << 20);
    while (true) {
      if (!pending_.empty()) {
        boost::system::error_code ec;
        size_t used = parser.put(boost::asio::buffer(pending_), ec);
        pending_.erase(0, used);
        if (ec && ec != http::error::need_more) return std::nullopt;
        if (parser.is_done()) return parser.release();
        if (!ec && used > 0) continue;
      }
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !ReadMore(left)) return std::nullopt;
    }
  }

  // True if the server closes the connection (EOF or reset) within `timeout`; data is skipped.
  bool WaitClosed(milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    while (!eof_) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      ReadMore(left);
    }
    return true;
  }

  std::string& pending() { return pending_; }
  bool eof() const { return eof_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  std::string pending_;
};

std::string Get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: test\r\n" + extra + "\r\n";
}
std::string Post(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Answers every request at once: 200 with a JSON echo of what the handler saw.
void Echo(HttpRequest req, std::shared_ptr<HttpResponder> res) {
  nlohmann::json echo = {{"method", req.method}, {"target", req.target}, {"path", req.Path()},
                         {"body", req.body}, {"x_test", req.Header("X-Test")}};
  res->Respond(200, {{"content-type", "application/json"}}, echo.dump());
}

// Hands each request's responder to the test (which answers it from its own thread).
struct Parked {
  std::mutex mu;
  std::vector<std::promise<std::shared_ptr<HttpResponder>>> promises{16};
  std::vector<std::future<std::shared_ptr<HttpResponder>>> futures;
  size_t next = 0;
  Parked() {
    for (auto& p : promises) futures.push_back(p.get_future());
  }
  HttpHandler Handler() {
    return [this](HttpRequest, std::shared_ptr<HttpResponder> res) {
      std::lock_guard<std::mutex> lock(mu);
      promises.at(next++).set_value(std::move(res));
    };
  }
  std::shared_ptr<HttpResponder> Take(size_t i) {
    if (futures.at(i).wait_for(kWait) != std::future_status::ready) return nullptr;
    return futures.at(i).get();
  }
};

std::unique_ptr<HttpServer> StartOrDie(HttpServerConfig config, HttpHandler handler) {
  auto server = HttpServer::Start(std::move(config), std::move(handler));
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return nullptr;
  }
  return std::move(server).value();
}

nlohmann::json ErrorOf(const http::response<http::string_body>& res) {
  return nlohmann::json::parse(res.body(), nullptr, false);
}

// The server answered `status` with an OpenAI-style error and closed the connection.
void ExpectRejected(RawClient& client, unsigned status, const std::string& what = "") {
  auto res = client.ReadResponse();
  ASSERT_TRUE(res) << "no answer to " << what;
  EXPECT_EQ(res->result_int(), status) << what;
  EXPECT_FALSE(res->keep_alive()) << what;
  EXPECT_EQ(ErrorOf(*res)["error"]["type"], "invalid_request_error") << res->body();
  EXPECT_TRUE(client.WaitClosed()) << what;
}

TEST(HttpServer, AnswersAPlainRequest) {
  auto server = StartOrDie({}, Echo);
  ASSERT_TRUE(server);
  ASSERT_NE(server->port(), 0) << "port 0 must report the bound port";
  RawClient client(server->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send("POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: t\r\nX-TEST: yes\r\nContent-Length: 4\r\n\r\nabcd"));
  auto res = client.ReadResponse();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result_int(), 200u);
  EXPECT_EQ((*res)[http::field::content_type], "application/json");
  auto echo = nlohmann::json::parse(res->body());
  EXPECT_EQ(echo["method"], "POST");
  EXPECT_EQ(echo["target"], "/v1/chat/completions?x=1");
  EXPECT_EQ(echo["path"], "/v1/chat/completions");
  EXPECT_EQ(echo["body"], "abcd");
  EXPECT_EQ(echo["x_test"], "yes") << "header names are matched in any case";
  EXPECT_EQ(server->stats().requests, 1u);
}

TEST(HttpServer, KeepAliveServesSeveralRequestsOnOneConnection) {
  auto server = StartOrDie({}, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client.Send(Post("/r" + std::to_string(i), "{}")));
    auto res = client.ReadResponse();
    ASSERT_TRUE(res) << "request " << i;
    EXPECT_EQ(nlohmann::json::parse(res->body())["target"], "/r" + std::to_string(i));
    EXPECT_TRUE(res->keep_alive());
  }
  // Two requests sent at once (pipelined) are answered in order, one after the other.
  ASSERT_TRUE(client.Send(Get("/a") + Get("/b")));
  auto a = client.ReadResponse();
  auto b = client.ReadResponse();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(nlohmann::json::parse(a->body())["target"], "/a");
  EXPECT_EQ(nlohmann::json::parse(b->body())["target"], "/b");
  EXPECT_EQ(server->stats().connections_accepted, 1u);
  EXPECT_EQ(server->stats().requests, 5u);
}

TEST(HttpServer, ConnectionCloseIsHonoured) {
  auto server = StartOrDie({}, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Get("/", "Connection: close\r\n")));
  auto res = client.ReadResponse();
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->keep_alive());
  EXPECT_TRUE(client.WaitClosed());
}

TEST(HttpServer, ExpectContinueAndHead) {
  auto server = StartOrDie({}, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  // curl sends Expect: 100-continue before a large body and waits for the interim answer.
  ASSERT_TRUE(client.Send("POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"));
  ASSERT_TRUE(client.ReadUntil("HTTP/1.1 100 Continue\r\n\r\n"));
  client.pending().clear();
  ASSERT_TRUE(client.Send("xyz"));
  auto res = client.ReadResponse();
  ASSERT_TRUE(res);
  EXPECT_EQ(nlohmann::json::parse(res->body())["body"], "xyz");
  // HEAD: the head alone, with the length the body would have; the connection stays usable.
  ASSERT_TRUE(client.Send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(client.ReadUntil("\r\n\r\n"));
  EXPECT_NE(client.pending().find("Content-Length: "), std::string::npos) << client.pending();
  EXPECT_EQ(client.pending().substr(client.pending().size() - 4), "\r\n\r\n") << "no body after a HEAD";
  client.pending().clear();
  ASSERT_TRUE(client.Send(Get("/after")));
  auto after = client.ReadResponse();
  ASSERT_TRUE(after);
  EXPECT_EQ(nlohmann::json::parse(after->body())["target"], "/after");
}

TEST(HttpServer, AServerSentEventStreamArrivesEventByEvent) {
  Parked parked;
  auto server = StartOrDie({}, parked.Handler());
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Post("/v1/chat/completions", R"({"stream":true})")));
  auto res = parked.Take(0);
  ASSERT_TRUE(res);
  res->StartStream(200, {{"content-type", "text/event-stream"}, {"cache-control", "no-cache"}});
  ASSERT_TRUE(client.ReadUntil("\r\n\r\n")) << "the head goes out before any event";
  EXPECT_NE(client.pending().find("Transfer-Encoding: chunked"), std::string::npos) << client.pending();
  EXPECT_NE(client.pending().find("text/event-stream"), std::string::npos);
  // Each event must reach the client before the next is written.
  for (int i = 0; i < 3; ++i) {
    const std::string event = "data: {\"i\":" + std::to_string(i) + "}\n\n";
    res->Write(event);
    ASSERT_TRUE(client.ReadUntil(event)) << "event " << i << " did not arrive on its own";
  }
  res->Write("data: [DONE]\n\n");
  res->End();
  ASSERT_TRUE(client.ReadUntil("0\r\n\r\n"));
  EXPECT_TRUE(res->closed());
  // The connection is still usable.
  client.pending().clear();
  ASSERT_TRUE(client.Send(Get("/next")));
  auto next = parked.Take(1);
  ASSERT_TRUE(next);
  next->Respond(204, {}, "");
  auto r = client.ReadResponse();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->result_int(), 204u);
}

TEST(HttpServer, BodyOverTheLimitGets413AndNeverReachesTheHandler) {
  HttpServerConfig config;
  config.max_body_bytes = 1024;
  std::atomic<int> handled{0};
  auto server = StartOrDie(config, [&](HttpRequest r, std::shared_ptr<HttpResponder> s) {
    ++handled;
    Echo(std::move(r), std::move(s));
  });
  ASSERT_TRUE(server);
  {  // Content-Length says too much: refused on the head alone.
    RawClient client(server->port());
    ASSERT_TRUE(client.Send("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n"));
    auto res = client.ReadResponse();
    ASSERT_TRUE(res);
    EXPECT_EQ(res->result_int(), 413u);
    auto error = ErrorOf(*res);
    EXPECT_EQ(error["error"]["type"], "invalid_request_error") << res->body();
    EXPECT_NE(error["error"]["message"].get<std::string>().find("1024"), std::string::npos);
    EXPECT_TRUE(client.WaitClosed());
  }
  {  // A chunked body grows past the limit chunk by chunk.
    RawClient client(server->port());
    std::string chunked = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 5; ++i) chunked += "200\r\n" + std::string(512, 'x') + "\r\n";
    ASSERT_TRUE(client.Send(chunked));
    ExpectRejected(client, 413);
  }
  {  // A chunked body within the limit arrives de-chunked.
    RawClient client(server->port());
    ASSERT_TRUE(client.Send("POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
    auto res = client.ReadResponse();
    ASSERT_TRUE(res);
    EXPECT_EQ(nlohmann::json::parse(res->body())["body"], "abcde");
  }
  EXPECT_EQ(handled.load(), 1);
  EXPECT_EQ(server->stats().body_too_large, 2u);
}

TEST(HttpServer, HugeHeadersGet431) {
  HttpServerConfig config;
  config.max_header_bytes = 1024;
  auto server = StartOrDie(config, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send("GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n"));
  ExpectRejected(client, 431);
  EXPECT_EQ(server->stats().header_too_large, 1u);
  EXPECT_EQ(server->stats().requests, 0u);
}

TEST(HttpServer, SlowlorisGets408WithinTheReadTimeoutEvenWhileTrickling) {
  HttpServerConfig config;
  config.read_timeout = milliseconds(300);
  auto server = StartOrDie(config, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  const auto start = Clock::now();
  ASSERT_TRUE(client.Send("POST / HTTP/1.1\r\nHost: t\r\n"));
  // Trickle one header byte whenever the server has said nothing for 20 ms: a timeout that
  // restarted on every byte would never fire.
  std::string header = "X-Slow: ";
  size_t sent = 0;
  while (client.pending().empty() && !client.eof() && Clock::now() - start < kWait) {
    if (!client.ReadMore(milliseconds(20)) && !client.eof()) client.Send(std::string(1, header[sent++ % header.size()]));
  }
  auto res = client.ReadResponse();
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(res) << "no 408 within " << kWait.count() << " ms";
  EXPECT_EQ(res->result_int(), 408u);
  EXPECT_GE(elapsed, config.read_timeout);
  EXPECT_LT(elapsed, milliseconds(3000)) << "the read timeout covers the whole request, not each byte";
  EXPECT_GT(sent, 3u) << "the client did trickle";
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_EQ(server->stats().read_timeout, 1u);
}

TEST(HttpServer, IdleKeepAliveConnectionIsClosed) {
  HttpServerConfig config;
  config.idle_timeout = milliseconds(200);
  auto server = StartOrDie(config, Echo);
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Get("/")));
  ASSERT_TRUE(client.ReadResponse());
  const auto start = Clock::now();
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_GE(Clock::now() - start, milliseconds(150));
  EXPECT_EQ(server->stats().idle_closed, 1u);
}

TEST(HttpServer, BadRequestLinesGet400AndTheServerKeepsServing) {
  auto server = StartOrDie({}, Echo);
  ASSERT_TRUE(server);
  for (const std::string bad : {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}) {
    RawClient client(server->port());
    ASSERT_TRUE(client.Send(bad));
    ExpectRejected(client, 400, bad);
  }
  {  // A client that sends half a request and half-closes gets no answer and costs nothing.
    RawClient half(server->port());
    ASSERT_TRUE(half.Send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
    half.ShutdownWrite();
    EXPECT_TRUE(half.WaitClosed());
  }
  RawClient good(server->port());
  ASSERT_TRUE(good.Send(Get("/ok")));
  auto res = good.ReadResponse();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->result_int(), 200u);
  EXPECT_EQ(server->stats().bad_request, 5u);
}

TEST(HttpServer, ClientDisconnectMidStreamCallsOnCloseWithoutAWrite) {
  Parked parked;
  auto server = StartOrDie({}, parked.Handler());
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Post("/v1/chat/completions", "{}")));
  auto res = parked.Take(0);
  ASSERT_TRUE(res);
  std::promise<void> closed;
  res->OnClose([&closed] { closed.set_value(); });
  res->StartStream(200, {{"content-type", "text/event-stream"}});
  res->Write("data: 1\n\n");
  ASSERT_TRUE(client.ReadUntil("data: 1"));
  const auto start = Clock::now();
  client.Close();
  // The handler writes nothing more: the server must notice on its own.
  ASSERT_EQ(closed.get_future().wait_for(kWait), std::future_status::ready) << "OnClose was not called";
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  EXPECT_TRUE(res->closed());
  res->Write("data: 2\n\n");  // after the close: nothing happens
  res->End();
  bool late = false;
  res->OnClose([&late] { late = true; });
  EXPECT_TRUE(late) << "OnClose after the close runs at once";
  EXPECT_EQ(server->stats().client_gone, 1u);
}

TEST(HttpServer, AClientThatStopsReadingIsClosedByTheWriteTimeout) {
  Parked parked;
  HttpServerConfig config;
  config.write_timeout = milliseconds(200);
  auto server = StartOrDie(config, parked.Handler());
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Get("/stream")));
  auto res = parked.Take(0);
  ASSERT_TRUE(res);
  std::promise<void> closed;
  res->OnClose([&closed] { closed.set_value(); });
  res->StartStream(200, {{"content-type", "text/event-stream"}});
  // 32 MiB: far more than loopback's socket buffers hold while the client reads nothing.
  res->Write(std::string(32 << 20, 'x'));
  ASSERT_EQ(closed.get_future().wait_for(kWait), std::future_status::ready) << "a stalled write was not cut";
  EXPECT_EQ(server->stats().write_timeout, 1u);
  EXPECT_EQ(server->stats().client_gone, 1u);
}

TEST(HttpServer, OnCloseIsNotCalledForAResponseThatEnded) {
  Parked parked;
  auto server = StartOrDie({}, parked.Handler());
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Get("/")));
  auto res = parked.Take(0);
  ASSERT_TRUE(res);
  std::atomic<bool> called{false};
  res->OnClose([&called] { called = true; });
  res->Respond(200, {}, "done");
  ASSERT_TRUE(client.ReadResponse());
  client.Close();
  server->Stop();
  EXPECT_FALSE(called.load());
  EXPECT_EQ(server->stats().client_gone, 0u);
}

TEST(HttpServer, ManyConnectionsAtOnceAreAllServed) {
  HttpServerConfig config;
  config.io_threads = 2;
  auto server = StartOrDie(config, Echo);
  ASSERT_TRUE(server);
  constexpr int kClients = 200;
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawClient>(server->port()));
    ASSERT_TRUE(clients.back()->Send(Get("/c" + std::to_string(i))));
  }
  for (int i = 0; i < kClients; ++i) {
    auto res = clients[i]->ReadResponse();
    ASSERT_TRUE(res) << "client " << i;
    EXPECT_EQ(nlohmann::json::parse(res->body())["target"], "/c" + std::to_string(i));
  }
  EXPECT_EQ(server->stats().connections_open, static_cast<uint64_t>(kClients));
  clients.clear();
  server->Stop();
  EXPECT_EQ(server->stats().connections_open, 0u);
  EXPECT_EQ(server->stats().requests, static_cast<uint64_t>(kClients));
}

TEST(HttpServer, ConnectionsOverTheCapAreClosed) {
  HttpServerConfig config;
  config.max_connections = 1;
  auto server = StartOrDie(config, Echo);
  ASSERT_TRUE(server);
  RawClient first(server->port());
  ASSERT_TRUE(first.Send(Get("/")));
  ASSERT_TRUE(first.ReadResponse());
  RawClient second(server->port());
  EXPECT_TRUE(second.WaitClosed());
  EXPECT_EQ(server->stats().connections_refused, 1u);
}

TEST(HttpServer, StopWithOpenConnectionsReturnsPromptly) {
  Parked parked;
  HttpServerConfig config;
  config.stop_grace = milliseconds(200);
  config.io_threads = 2;
  auto server = StartOrDie(config, parked.Handler());
  ASSERT_TRUE(server);
  RawClient idle(server->port());
  RawClient busy(server->port());
  RawClient streaming(server->port());
  RawClient half(server->port());
  ASSERT_TRUE(half.Send("GET / HTTP/1.1\r\n"));
  ASSERT_TRUE(busy.Send(Get("/busy")));
  auto pending = parked.Take(0);
  ASSERT_TRUE(streaming.Send(Get("/stream")));
  auto stream = parked.Take(1);
  ASSERT_TRUE(pending && stream);
  stream->StartStream(200, {{"content-type", "text/event-stream"}});
  stream->Write("data: x\n\n");
  ASSERT_TRUE(streaming.ReadUntil("data: x"));
  std::promise<void> pending_closed;
  pending->OnClose([&] { pending_closed.set_value(); });
  const auto start = Clock::now();
  server->Stop();
  EXPECT_LT(Clock::now() - start, milliseconds(2000)) << "Stop waits stop_grace, then closes";
  EXPECT_EQ(pending_closed.get_future().wait_for(milliseconds(0)), std::future_status::ready)
      << "a response cut by Stop calls OnClose";
  EXPECT_TRUE(idle.WaitClosed());
  EXPECT_TRUE(busy.WaitClosed());
  EXPECT_TRUE(half.WaitClosed());
  EXPECT_TRUE(streaming.WaitClosed());
  // Answers after Stop, and after the server is gone, do nothing.
  pending->Respond(200, {}, "late");
  server.reset();
  stream->Write("data: late\n\n");
  stream->End();
  EXPECT_TRUE(stream->closed());
}

TEST(HttpServer, StopLetsAResponseInFlightFinishWithinTheGrace) {
  Parked parked;
  HttpServerConfig config;
  config.stop_grace = milliseconds(5000);
  auto server = StartOrDie(config, parked.Handler());
  ASSERT_TRUE(server);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send(Get("/")));
  auto res = parked.Take(0);
  ASSERT_TRUE(res);
  std::thread stopper([&] { server->Stop(); });
  // Draining has begun once the listening socket is closed (a connect is refused).
  const auto deadline = Clock::now() + kWait;
  while (Clock::now() < deadline && RawClient(server->port()).connected()) {
  }
  res->Respond(200, {}, "finished");
  auto r = client.ReadResponse();
  stopper.join();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body(), "finished");
  EXPECT_FALSE(r->keep_alive()) << "a draining server closes after the response";
}

TEST(HttpServer, StartRefusesABadHostAndAPortInUse) {
  HttpServerConfig bad;
  bad.host = "not-an-ip";
  auto a = HttpServer::Start(bad, Echo);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  auto first = StartOrDie({}, Echo);
  ASSERT_TRUE(first);
  HttpServerConfig same;
  same.port = first->port();
  auto b = HttpServer::Start(same, Echo);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(b.status().message().find(std::to_string(first->port())), std::string::npos) << b.status();
}

TEST(HttpServer, ParseListenAddress) {
  HttpServerConfig c;
  ASSERT_TRUE(ParseListenAddress("0.0.0.0:8080", &c).ok());
  EXPECT_EQ(c.host, "0.0.0.0");
  EXPECT_EQ(c.port, 8080);
  ASSERT_TRUE(ParseListenAddress("[::1]:0", &c).ok());
  EXPECT_EQ(c.host, "::1");
  EXPECT_EQ(c.port, 0);
  EXPECT_FALSE(ParseListenAddress("localhost", &c).ok());
  EXPECT_FALSE(ParseListenAddress("1.2.3.4:70000", &c).ok());
  EXPECT_FALSE(ParseListenAddress(":80", &c).ok());
  EXPECT_FALSE(ParseListenAddress("1.2.3.4:8x", &c).ok());
}

}  // namespace
}  // namespace troupe::api
