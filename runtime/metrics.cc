// Metrics.
#include "runtime/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>

#include <limits>

namespace troupe::runtime {

class MetricsServer::Collector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<MetricsSource> sources;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sources = sources_;
    }
    std::vector<prometheus::MetricFamily> out;
    for (const auto& source : sources) source(out);
    return out;
  }
  void Add(MetricsSource source) {
    std::lock_guard<std::mutex> lock(mu_);
    sources_.push_back(std::move(source));
  }

 private:
  mutable std::mutex mu_;
  std::vector<MetricsSource> sources_;
};

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host, uint16_t port) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  std::string bind = host + ":" + std::to_string(port);
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(bind, 1);
  } catch (const std::exception& e) {
    return UnavailableError("metrics: cannot listen on " + bind + ": " + e.what() +
                            " (is the port in use? set metrics_port to another port, or 0)");
  }
  auto ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) return UnavailableError("metrics: not listening on " + bind);
  server->address_ = host + ":" + std::to_string(ports.front());
  server->collector_ = std::make_shared<Collector>();
  server->exposer_->RegisterCollectable(server->collector_);
  return server;
}

MetricsServer::~MetricsServer() = default;

void MetricsServer::AddSource(MetricsSource source) { collector_->Add(std::move(source)); }

prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help) {
  return prometheus::MetricFamily{name, help, prometheus::MetricType::Counter, {}};
}

prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help) {
  return prometheus::MetricFamily{name, help, prometheus::MetricType::Gauge, {}};
}

void AddSample(prometheus::MetricFamily& family, double value, std::vector<std::pair<std::string, std::string>> labels) {
  prometheus::ClientMetric metric;
  for (auto& [k, v] : labels) metric.label.push_back({k, v});
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

MetricsSource RuntimeMetrics(Runtime& runtime) {
  std::string node = runtime.node_name();
  return [&runtime, node](std::vector<prometheus::MetricFamily>& out) {
    RuntimeStats s = runtime.stats();
    auto counter = [&](const std::string& name, const std::string& help, double v) {
      auto f = CounterFamily(name, help);
      AddSample(f, v, {{"node", node}});
      out.push_back(std::move(f));
    };
    auto gauge = [&](const std::string& name, const std::string& help, double v) {
      auto f = GaugeFamily(name, help);
      AddSample(f, v, {{"node", node}});
      out.push_back(std::move(f));
    };
    counter("troupe_transport_frames_sent_total", "Frames sent to peers", s.transport.frames_sent);
    counter("troupe_transport_frames_received_total", "Frames received from peers", s.transport.frames_received);
    counter("troupe_transport_batches_sent_total", "Messages that carried several small frames to one peer",
            s.transport.batches_sent);
    counter("troupe_transport_bytes_sent_total", "Payload bytes sent", s.transport.bytes_sent);
    counter("troupe_transport_bytes_received_total", "Payload bytes received", s.transport.bytes_received);
    counter("troupe_transport_send_errors_total", "Sends that failed", s.transport.send_errors);
    counter("troupe_transport_auth_failures_total", "Handshakes refused (wrong token, bad proof, timeout)",
            s.transport.auth_failures);
    {
      auto f = CounterFamily("troupe_transport_rejected_frames_total", "Frames refused, by reason");
      AddSample(f, s.transport.rejected_malformed, {{"node", node}, {"reason", "malformed"}});
      AddSample(f, s.transport.rejected_version, {{"node", node}, {"reason", "version"}});
      AddSample(f, s.transport.rejected_oversized, {{"node", node}, {"reason", "oversized"}});
      AddSample(f, s.transport.rejected_unauthenticated, {{"node", node}, {"reason", "unauthenticated"}});
      AddSample(f, s.transport.rejected_busy, {{"node", node}, {"reason", "busy"}});
      out.push_back(std::move(f));
    }
    gauge("troupe_transport_peers_connected", "Authenticated peers now", s.transport.peers_connected);
    counter("troupe_transport_connections_refused_total",
            "Connections closed on arrival: max_unauthenticated_connections were authenticating",
            s.transport.connections_refused);
    gauge("troupe_transport_peers_known", "Peers with transport state now (connected or connecting)",
          s.transport.peers_known);
    gauge("troupe_transport_addresses_known",
          "Dial addresses kept (configured, connected, and the last max_departed_peers that went)",
          s.transport.addresses_known);
    {
      auto restarts = CounterFamily("troupe_supervisor_restarts_total", "Child restarts by supervisor and child");
      for (const auto& [key, n] : runtime.supervision().restarts()) {
        AddSample(restarts, n, {{"node", node}, {"supervisor", key.first}, {"child", key.second}});
      }
      out.push_back(std::move(restarts));
      auto escalations = CounterFamily("troupe_supervisor_escalations_total",
                                       "Supervisors that gave up (restart intensity exceeded) and escalated");
      for (const auto& [name, n] : runtime.supervision().escalations()) {
        AddSample(escalations, n, {{"node", node}, {"supervisor", name}});
      }
      out.push_back(std::move(escalations));
      auto depth = GaugeFamily("troupe_actor_mailbox_depth",
                               "Messages waiting in the mailbox of troupe's own actors (sampled every second)");
      for (const auto& [actor, n] : runtime.mailbox_depths().Snapshot()) {
        AddSample(depth, static_cast<double>(n), {{"node", node}, {"actor", actor}});
      }
      out.push_back(std::move(depth));
    }
    counter("troupe_transport_peer_failures_total", "Connections to peers that failed", s.transport.peer_failures);
    counter("troupe_runtime_messages_out_total", "Actor messages and replies sent to other nodes", s.bridge.messages_out);
    counter("troupe_runtime_messages_in_total", "Actor messages and replies received from other nodes",
            s.bridge.messages_in);
    gauge("troupe_runtime_requests_pending", "Requests to remote actors awaiting a reply", s.bridge.requests_pending);
    counter("troupe_runtime_requests_failed_node_lost_total", "Pending requests failed because their node was lost",
            s.bridge.requests_failed_node_lost);
    counter("troupe_runtime_requests_failed_send_total",
            "Pending requests failed because their frame could not be sent (often a lost node seen first by the transport)",
            s.bridge.requests_failed_send);
    counter("troupe_runtime_error_replies_total", "Requests from peers answered with an error by the runtime",
            s.bridge.error_replies_sent);
    counter("troupe_runtime_dropped_messages_total", "One-way messages that could not be delivered", s.bridge.dropped);
    gauge("troupe_runtime_remote_proxies", "Proxies of remote actors alive now", s.bridge.proxies);
    counter("troupe_runtime_nodes_lost_total", "Peer nodes lost (transport failure or missed heartbeats)",
            s.bridge.nodes_lost);
    {
      prometheus::MetricFamily f{"troupe_runtime_request_latency_seconds",
                                 "Round trip of requests to remote actors (sent to reply delivered)",
                                 prometheus::MetricType::Histogram, {}};
      prometheus::ClientMetric m;
      m.label.push_back({"node", node});
      uint64_t cumulative = 0;
      for (size_t i = 0; i < kLatencyBucketCount; ++i) {
        cumulative += s.bridge.latency_buckets[i];
        m.histogram.bucket.push_back({cumulative, kLatencyBuckets[i]});
      }
      cumulative += s.bridge.latency_buckets[kLatencyBucketCount];
      m.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
      m.histogram.sample_count = s.bridge.latency_count;
      m.histogram.sample_sum = s.bridge.latency_sum_seconds;
      f.metric.push_back(std::move(m));
      out.push_back(std::move(f));
    }
    gauge("troupe_runtime_actors_running", "Actors running in this process (CAF's count)",
          runtime.system().registry().running());
    {
      // One series per peer connected now, and peer="departed" for the sum over peers that went:
      // every short-lived client (each `troupe status`) is a new node id, and series per id
      // would grow without bound.
      auto frames = CounterFamily("troupe_transport_peer_frames_total",
                                  "Frames exchanged with each connected peer node (peer=\"departed\": all that went)");
      auto bytes = CounterFamily("troupe_transport_peer_bytes_total",
                                 "Payload bytes exchanged with each connected peer node (peer=\"departed\": all that went)");
      for (const auto& t : runtime.transport().peer_traffic()) {
        std::string peer = t.peer == 0 ? "departed" : std::to_string(t.peer);
        AddSample(frames, t.frames_in, {{"node", node}, {"peer", peer}, {"direction", "in"}});
        AddSample(frames, t.frames_out, {{"node", node}, {"peer", peer}, {"direction", "out"}});
        AddSample(bytes, t.bytes_in, {{"node", node}, {"peer", peer}, {"direction", "in"}});
        AddSample(bytes, t.bytes_out, {{"node", node}, {"peer", peer}, {"direction", "out"}});
      }
      out.push_back(std::move(frames));
      out.push_back(std::move(bytes));
    }
    counter("troupe_runtime_heartbeat_timeouts_total", "Peers disconnected for missed heartbeats",
            s.bridge.heartbeat_timeouts);
  };
}

}  // namespace troupe::runtime
