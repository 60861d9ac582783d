// troupe: the command-line entry point. One CLI11 app declares every command and its flags (the
// cluster commands run in cli/cluster_commands.cc, check in cli/check_command.cc); `troupe demo`,
// two processes exchanging frames over UCX, runs here.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "actors/serving/deployment_spec.h"
#include "cli/audit_commands.h"
#include "cli/check_command.h"
#include "cli/cluster_commands.h"
#include "cli/job_commands.h"
#include "cli/api_commands.h"
#include "cli/serve_commands.h"
#include "cli/json_output.h"
#include "cluster/config.h"
#include "cluster/scheduler.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "transport/ucx_transport.h"

namespace troupe::cli {
namespace {

using namespace std::chrono_literals;
using transport::Frame;
using transport::FrameHeader;
using transport::NodeId;
using transport::TransportHandler;
using transport::UcxTransport;
using transport::UcxTransportConfig;
using Clock = std::chrono::steady_clock;

struct DemoOptions {
  uint64_t frames = 10000;
  uint64_t size = 64;
  std::string tls;
  bool json = false;
  std::string log_level = "warn";
};

UcxTransportConfig DemoConfig(NodeId id, const std::string& tls, const std::string& token) {
  UcxTransportConfig config;
  config.node_id = id;
  config.node_name = id == 1 ? "demo-client" : "demo-peer";
  config.cluster_token = token;
  config.ucx_tls = tls;
  return config;
}

// The second process: echoes every frame back until stdin says "quit" or closes.
// `args`: the UCX transports ("-": UCX's choice) and the log level.
int RunDemoPeer(const std::vector<std::string>& args) {
  const char* token = std::getenv("TROUPE_DEMO_TOKEN");
  if (token == nullptr) {
    std::cerr << "troupe demo-peer: TROUPE_DEMO_TOKEN is not set\n";
    return 2;
  }
  InitLogging(args[1]).IgnoreError();
  UcxTransport transport(DemoConfig(2, args[0] == "-" ? "" : args[0], token));
  TransportHandler handler;
  handler.on_frame = [&transport](NodeId peer, Frame frame) {
    transport.Send(peer, frame.header, std::move(frame.payload)).IgnoreError();
  };
  if (auto s = transport.Start(std::move(handler)); !s.ok()) {
    std::cerr << "troupe demo-peer: " << s << "\n";
    return 1;
  }
  std::cout << "LISTEN " << transport.listen_address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
  }
  transport.Stop();
  return 0;
}

std::string RandomToken() {
  auto now = Clock::now().time_since_epoch().count();
  return "demo-" + std::to_string(getpid()) + "-" + std::to_string(now);
}

int RunDemo(const DemoOptions& o, const std::string& self_path) {
  if (auto s = InitLogging(o.log_level); !s.ok()) {
    std::cerr << "troupe demo: --log-level: " << s.message() << "\n";
    return 2;
  }
  auto say = [&](const std::string& line) {
    if (!o.json) std::cout << line << std::endl;
  };
  const std::string token = RandomToken();
  say("troupe demo: starting a peer process");
  auto peer = ChildProcess::Spawn({self_path, "demo-peer", o.tls.empty() ? "-" : o.tls, o.log_level},
                                  {"TROUPE_DEMO_TOKEN=" + token});
  if (!peer.ok()) {
    std::cerr << "troupe demo: cannot start the peer process: " << peer.status().message() << "\n";
    return 1;
  }
  auto address = (*peer)->ReadLineWithPrefix("LISTEN ", 30s);
  if (!address.ok()) {
    std::cerr << "troupe demo: the peer process did not come up: " << address.status().message() << "\n";
    return 1;
  }
  say("troupe demo: peer (pid " + std::to_string((*peer)->pid()) + ") listening on " + *address);

  std::mutex mu;
  std::condition_variable cv;
  uint64_t received = 0;
  uint64_t bad = 0;
  bool lost = false;
  std::string lost_reason;
  std::vector<double> rtt_us;
  rtt_us.reserve(o.frames);
  std::vector<Clock::time_point> sent_at(o.frames);

  UcxTransport transport(DemoConfig(1, o.tls, token));
  TransportHandler handler;
  handler.on_frame = [&](NodeId, Frame frame) {
    auto now = Clock::now();
    std::lock_guard<std::mutex> lock(mu);
    uint64_t seq = frame.header.request_id;
    bool intact = seq < o.frames && seq == received && frame.payload.size() == o.size &&
                  std::all_of(frame.payload.data(), frame.payload.data() + frame.payload.size(),
                              [&](uint8_t b) { return b == static_cast<uint8_t>(seq); });
    if (!intact) ++bad;
    if (seq < o.frames) rtt_us.push_back(std::chrono::duration<double, std::micro>(now - sent_at[seq]).count());
    ++received;
    cv.notify_all();
  };
  handler.on_peer_failed = [&](NodeId, const Status& reason) {
    std::lock_guard<std::mutex> lock(mu);
    lost = true;
    lost_reason = reason.ToString();
    cv.notify_all();
  };
  if (auto s = transport.Start(std::move(handler)); !s.ok()) {
    std::cerr << "troupe demo: " << s << "\n";
    return 1;
  }
  transport.AddPeer(2, *address);

  // Keep a bounded window of frames in flight; report progress every tenth.
  const uint64_t window = 64;
  auto start = Clock::now();
  uint64_t next_report = std::max<uint64_t>(1, o.frames / 10);
  for (uint64_t seq = 0; seq < o.frames; ++seq) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, 30s, [&] { return lost || seq - received < window; }) || lost) break;
    }
    Buffer payload = Buffer::Allocate(o.size);
    if (o.size > 0) std::memset(payload.data(), static_cast<uint8_t>(seq), o.size);
    FrameHeader h;
    h.request_id = seq;
    sent_at[seq] = Clock::now();
    if (auto s = transport.Send(2, h, std::move(payload)); !s.ok()) {
      std::cerr << "troupe demo: send failed: " << s << "\n";
      return 1;
    }
    if ((seq + 1) % next_report == 0) say("troupe demo: sent " + std::to_string(seq + 1) + "/" + std::to_string(o.frames));
  }
  bool complete;
  {
    std::unique_lock<std::mutex> lock(mu);
    complete = cv.wait_for(lock, 60s, [&] { return lost || received == o.frames; }) && !lost;
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto stats = transport.stats();
  transport.Stop();
  (*peer)->WriteLine("quit").IgnoreError();
  (*peer)->Wait(10s).IgnoreError();

  std::lock_guard<std::mutex> lock(mu);
  std::sort(rtt_us.begin(), rtt_us.end());
  auto pct = [&](double q) { return rtt_us.empty() ? 0.0 : rtt_us[static_cast<size_t>(q * (rtt_us.size() - 1))]; };
  bool ok = complete && bad == 0;
  if (o.json) {
    // Rounded as the text output is; numbers stay numbers.
    auto round = [](double v, double scale) { return std::round(v * scale) / scale; };
    nlohmann::ordered_json rtt = {
        {"p50", round(pct(0.5), 100)}, {"p99", round(pct(0.99), 100)}, {"max", round(pct(1.0), 100)}};
    nlohmann::ordered_json out = {{"ok", ok},
                                  {"frames_sent", stats.frames_sent},
                                  {"frames_echoed", received},
                                  {"frames_corrupt", bad},
                                  {"payload_bytes", o.size},
                                  {"seconds", round(seconds, 1e6)},
                                  {"frames_per_second", round(received / seconds, 10)},
                                  {"rtt_us", std::move(rtt)},
                                  {"peer_lost", lost}};
    std::cout << OneLineJson(out) << std::endl;
  } else {
    std::printf("troupe demo: %llu of %llu frames echoed intact in %.3f s (%.0f frames/s)\n",
                static_cast<unsigned long long>(received - bad), static_cast<unsigned long long>(o.frames), seconds,
                received / seconds);
    std::printf("troupe demo: round trip p50 %.1f us, p99 %.1f us (window of %llu frames in flight)\n", pct(0.5),
                pct(0.99), static_cast<unsigned long long>(window));
    if (lost) std::printf("troupe demo: peer lost: %s\n", lost_reason.c_str());
    std::printf("troupe demo: %s\n", ok ? "ok" : "FAILED");
  }
  return ok ? 0 : 1;
}

// ---- The command line: one CLI11 app, a subcommand per command ----

// A CLI11 check from one of troupe's parsers: its message is the error (CLI11 puts the flag's
// name in front of it).
template <typename Parse>
std::function<std::string(const std::string&)> ParsedBy(Parse parse) {
  return [parse](const std::string& value) {
    auto parsed = parse(value);
    return parsed.ok() ? std::string() : std::string(parsed.status().message());
  };
}

// A whole decimal number in [min, max]. (CLI11's own integer conversion also takes hex and octal
// and wraps "-1" around for unsigned types.)
StatusOr<uint64_t> ParseCount(const std::string& value, uint64_t min, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || value[0] == '-' || value[0] == '+' || v < min || v > max) {
    return InvalidArgumentError("'" + value + "' is not a whole number in " + std::to_string(min) + ".." +
                                std::to_string(max));
  }
  return static_cast<uint64_t>(v);
}

template <typename T>
CLI::Option* AddCount(CLI::App* app, const std::string& name, T* target, uint64_t min, uint64_t max,
                      const std::string& description) {
  auto parse = [min, max](const std::string& v) { return ParseCount(v, min, max); };
  return app
      ->add_option_function<std::string>(
          name, [target, parse](const std::string& v) { *target = static_cast<T>(*parse(v)); }, description)
      ->check(ParsedBy(parse))
      ->type_name("N");
}

// The levels InitLogging takes (spdlog's names), refused while parsing so the error names the flag.
CLI::Option* AddLogLevel(CLI::App* app, std::string* target, const std::string& description) {
  auto check = [](const std::string& level) -> std::string {
    const auto parsed = spdlog::level::from_str(level);
    if (parsed != spdlog::level::off || level == "off") return "";
    return "unknown log level '" + level + "' (expected trace, debug, info, warn, error or off)";
  };
  return app->add_option("--log-level", *target, description)->check(check)->type_name("LEVEL");
}

CLI::Option* AddConfig(CLI::App* app, std::string* target) {
  return app->add_option("-c,--config", *target, "the cluster file (YAML; docs/config.md)")
      ->required()
      ->type_name("FILE");
}

constexpr const char* kLogLevelHelp = "trace, debug, info, warn, error or off (default: the config's log_level)";
constexpr const char* kClientLogLevelHelp = "trace, debug, info, warn, error or off (default warn)";
constexpr const char* kHeadHelp = "the head's address (default: from the config, docs/cli.md)";

// Parses the command line and runs the command; returns the exit status (2 for bad usage).
int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // Everything after the first `--` is `troupe run`'s command, never read as troupe's flags.
  const auto dash = std::find(args.begin(), args.end(), "--");
  const bool has_dash = dash != args.end();
  std::vector<std::string> command(has_dash ? dash + 1 : args.end(), args.end());
  args.erase(dash, args.end());

  CLI::App app("troupe: a distributed actor runtime for GPU training and serving clusters (docs/cli.md)", "troupe");
  app.get_formatter()->column_width(30);
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string("troupe ") + TROUPE_VERSION, "print the version");

  ClusterOptions up_options, down_options, status_options, slices_options, events_options, head_options, node_options,
      gateway_options;
  RunOptions run_options;
  run_options.request.slice_memory_bytes = 1;  // one slice of whatever size, unless --memory says more
  CheckOptions check_options;
  DemoOptions demo_options;
  std::vector<std::string> demo_peer_args, stray, help_topic;

  CLI::App* up = app.add_subcommand(
      "up", "start the head and every node of FILE here; restart what crashes; Ctrl-C stops the cluster");
  AddConfig(up, &up_options.config_path);
  AddLogLevel(up, &up_options.log_level, kLogLevelHelp);

  CLI::App* down = app.add_subcommand("down", "stop the cluster that `troupe up -c FILE` started");
  AddConfig(down, &down_options.config_path);

  CLI::App* status = app.add_subcommand(
      "status", "the cluster's nodes: state, address, resources, heartbeat (--json for scripts)");
  CLI::App* slices =
      app.add_subcommand("slices", "every GPU's slices, their owners and free capacity, waiting requests");
  CLI::App* events = app.add_subcommand("events", "supervision events (restarts, escalations) the head was sent");
  auto add_client_flags = [](CLI::App* sub, ClusterOptions* options) {
    AddConfig(sub, &options->config_path);
    sub->add_flag("--json", options->json, "print one line of JSON (docs/cli.md gives its shape)");
    sub->add_option("--head", options->head, kHeadHelp)->type_name("HOST:PORT");
    AddLogLevel(sub, &options->log_level, kClientLogLevelHelp);
  };
  add_client_flags(status, &status_options);
  add_client_flags(slices, &slices_options);
  add_client_flags(events, &events_options);

  // troupe job ACTION: training jobs (docs/jobs.md).
  JobOptions job_options;
  CLI::App* job = app.add_subcommand("job", "training jobs: submit, list, show, events, logs, stop, resume, delete");
  job->require_subcommand(1, 1);
  const std::vector<std::pair<std::string, std::string>> job_actions = {
      {"submit", "check the job spec FILE (docs/jobs.md) and submit it; --wait follows it to its end"},
      {"list", "every job: state, attempt, newest checkpoint, reason"},
      {"show", "one job: state, failures, checkpoint, workers"},
      {"events", "a job's transitions and checkpoints, oldest first"},
      {"logs", "a job's workers' output, through their nodes (-f follows, --worker R one rank)"},
      {"stop", "stop a job: its workers are killed, its slices freed"},
      {"resume", "start a stopped or failed job again from its newest committed checkpoint"},
      {"resubmit", "start a finished job again from scratch (its checkpoints are deleted)"},
      {"delete", "forget a finished job, its events and its checkpoints"},
  };
  for (const auto& [name, help_text] : job_actions) {
    CLI::App* sub = job->add_subcommand(name, help_text);
    add_client_flags(sub, &job_options.cluster);
    if (name == "submit") {
      sub->add_option("spec", job_options.target, "the job spec (YAML)")->required()->type_name("FILE");
      sub->add_flag("--wait", job_options.wait, "print each change of state until the job ends; exit 0 if it succeeded");
    } else if (name != "list") {
      sub->add_option("job", job_options.target, "the job's name")->required()->type_name("NAME");
    }
    if (name == "logs") {
      sub->add_option("--worker", job_options.worker, "only this rank's output")->type_name("R");
      sub->add_flag("-f,--follow", job_options.follow, "keep printing until the job ends");
    }
  }

  // troupe model list|show: the model repository (versions registered by jobs' output_model).
  JobOptions model_options;
  CLI::App* model = app.add_subcommand("model", "the model repository: list, show (versions registered by jobs)");
  model->require_subcommand(1, 1);
  CLI::App* model_list = model->add_subcommand("list", "every model version: source job, step, size, time");
  add_client_flags(model_list, &model_options.cluster);
  CLI::App* model_show = model->add_subcommand("show", "one model's versions");
  add_client_flags(model_show, &model_options.cluster);
  model_show->add_option("model", model_options.target, "the model's name")->required()->type_name("NAME");

  // troupe serve ACTION: serving deployments (docs/serving.md, "Deployments").
  ServeOptions serve_options;
  CLI::App* serve =
      app.add_subcommand("serve", "serving deployments: deploy, update, rollback, list, show, events, scale, delete, request");
  serve->require_subcommand(1, 1);
  const std::vector<std::pair<std::string, std::string>> serve_actions = {
      {"deploy", "check the deployment spec FILE (docs/serving.md) and deploy it; --wait until its replicas are ready"},
      {"update", "replace a running deployment's spec with FILE (same name): changed versions roll out within "
                 "rollout.max_surge/max_unavailable; --wait until the rollout is complete"},
      {"rollback", "go back to the spec the last update replaced, rolled out the same way; --wait as update"},
      {"list", "every deployment: state, desired replicas, replicas by state"},
      {"show", "one deployment: state, versions, replicas (state, node, lease), router"},
      {"events", "a deployment's changes (replicas started, ready, replaced, drained; scale decisions), oldest first"},
      {"scale", "run exactly N replicas from now on (the autoscaler's decisions are ignored afterwards)"},
      {"delete", "stop every replica of a deployment, free their leases and forget it"},
      {"request", "send one inference request through the deployment's router and print the response body"},
  };
  for (const auto& [name, help_text] : serve_actions) {
    CLI::App* sub = serve->add_subcommand(name, help_text);
    add_client_flags(sub, &serve_options.cluster);
    if (name == "deploy" || name == "update") {
      sub->add_option("spec", serve_options.target, "the deployment spec (YAML)")->required()->type_name("FILE");
    } else if (name != "list") {
      sub->add_option("deployment", serve_options.target, "the deployment's name")->required()->type_name("NAME");
    }
    if (name == "deploy" || name == "update" || name == "rollback") {
      sub->add_flag("--wait", serve_options.wait, "print each change until every desired replica is ready");
      sub->add_option("--wait-timeout", serve_options.wait_seconds, "how long --wait waits (seconds, default 120)")
          ->type_name("S");
    }
    if (name == "scale") {
      sub->add_option("replicas", serve_options.replicas, "the replica count")->required()->type_name("N")
          ->check(CLI::Range(0, static_cast<int>(serving::kMaxDeploymentReplicas)));
    }
    if (name == "request") {
      sub->add_option("--body", serve_options.body, "the OpenAI JSON request body")->required()->type_name("JSON");
      sub->add_option("--path", serve_options.path, "/v1/chat/completions (default) or /v1/completions")
          ->type_name("PATH");
      sub->add_option("--timeout", serve_options.timeout_seconds, "the request's deadline (seconds, default 60)")
          ->type_name("S");
    }
  }

  // troupe key|tenant ACTION and troupe usage: the API gateway's keys, tenants and metered usage
  // (docs/gateway.md, "Keys, tenants and usage from the command line").
  ApiOptions key_options, tenant_options, usage_options;
  auto add_limits = [](CLI::App* sub, ApiOptions* o) {
    AddCount(sub, "--rpm", &o->rpm, 0, uint64_t{1} << 40, "requests per minute (default 0: unlimited)");
    AddCount(sub, "--tpm", &o->tpm, 0, uint64_t{1} << 50,
             "tokens per minute, prompt plus completion (default 0: unlimited)");
    AddCount(sub, "--max-concurrent", &o->max_concurrent, 0, uint64_t{1} << 30,
             "requests in flight at once (default 0: unlimited)");
  };
  CLI::App* key = app.add_subcommand("key", "API keys of the gateway: create, list, revoke");
  key->require_subcommand(1, 1);
  CLI::App* key_create = key->add_subcommand("create", "make a key for a tenant; it is printed once and never again");
  add_client_flags(key_create, &key_options.cluster);
  key_create->add_option("--tenant", key_options.tenant, "the key's tenant (troupe tenant create)")
      ->required()
      ->type_name("T");
  key_create->add_option("--role", key_options.role, "user (default), operator or admin (docs/gateway.md, roles)")
      ->check(CLI::IsMember({"user", "operator", "admin"}))
      ->type_name("ROLE");
  key_create->add_option("--expires-in", key_options.expires_in, "how long it works: 90d, 12h (default: never)")
      ->type_name("D");
  key_create->add_option("--deployments", key_options.deployments,
                         "the deployments it may call, comma-separated (default: all of the tenant's)")
      ->type_name("A,B");
  add_limits(key_create, &key_options);
  CLI::App* key_list = key->add_subcommand("list", "every key (never the key itself): tenant, role, state, expiry, limits");
  add_client_flags(key_list, &key_options.cluster);
  key_list->add_option("--tenant", key_options.tenant, "only this tenant's keys")->type_name("T");
  CLI::App* key_revoke = key->add_subcommand("revoke", "revoke a key by id: its requests get 401 from now on");
  add_client_flags(key_revoke, &key_options.cluster);
  key_revoke->add_option("id", key_options.target, "the key's id (troupe key list)")->required()->type_name("ID");

  CLI::App* tenant = app.add_subcommand("tenant", "tenants of the gateway's keys: create, list");
  tenant->require_subcommand(1, 1);
  CLI::App* tenant_create = tenant->add_subcommand("create", "make a tenant, with its limits (shared by its keys)");
  add_client_flags(tenant_create, &tenant_options.cluster);
  tenant_create->add_option("name", tenant_options.target, "the tenant's name (a DNS label: a-z, 0-9, -)")
      ->required()
      ->type_name("NAME");
  add_limits(tenant_create, &tenant_options);
  CLI::App* tenant_list = tenant->add_subcommand("list", "every tenant and its limits");
  add_client_flags(tenant_list, &tenant_options.cluster);

  CLI::App* usage = app.add_subcommand(
      "usage", "tokens, requests and errors through the gateway per key, tenant, model and hour (UTC)");
  add_client_flags(usage, &usage_options.cluster);
  usage->add_option("--key", usage_options.key, "only this key (its id)")->type_name("ID");
  usage->add_option("--tenant", usage_options.tenant, "only this tenant")->type_name("T");
  usage->add_option("--model", usage_options.model, "only this model (deployment)")->type_name("M");
  usage->add_option("--since", usage_options.since, "only the last D: 24h, 7d (default: everything)")->type_name("D");

  // troupe audit: the head's audit log of admin actions (docs/gateway.md, "Audit log").
  AuditOptions audit_options;
  CLI::App* audit = app.add_subcommand(
      "audit", "the admin actions the head performed (who, what, when, result); --verify checks the hash chain");
  add_client_flags(audit, &audit_options.cluster);
  audit->add_option("--since", audit_options.since, "only the last D (24h, 7d) or from a UTC date (2026-11-30)")
      ->type_name("D");
  audit->add_flag("--verify", audit_options.verify,
                  "check every record's hash and link; exit 1 naming the first changed or removed record");

  CLI::App* run = app.add_subcommand(
      "run", "lease a GPU slice and run CMD on it: troupe run -c FILE [OPTIONS] -- CMD [ARGS...]");
  run->footer(
      "CMD (everything after --) runs on the slice (CUDA_VISIBLE_DEVICES, MPS limits) with this terminal's stdin,\n"
      "stdout and stderr; TERM, INT, HUP, USR1 and USR2 are passed on to CMD, CMD dies with troupe run, and the\n"
      "lease ends once CMD is gone. Exits with CMD's status.");
  {
    cluster::LeaseRequest& request = run_options.request;
    AddConfig(run, &run_options.cluster.config_path);
    run->add_option_function<std::string>(
           "--memory", [&request](const std::string& v) { request.slice_memory_bytes = *cluster::ParseSize(v); },
           "GPU memory to lease, e.g. 4GiB (0: no GPU; default one slice)")
        ->check(ParsedBy(cluster::ParseSize))
        ->type_name("SIZE");
    AddCount(run, "--compute", &request.compute_percent, 0, 100, "share of the GPU's compute, in percent");
    AddCount(run, "--cpus", &request.cpus, 0, 4096, "CPUs to lease");
    run->add_option("--tenant", request.tenant, "the tenant whose quota the lease counts against (default: default)")
        ->type_name("T");
    run->add_option("--priority", request.priority, "urgent or normal (default normal)")
        ->check(ParsedBy(cluster::sched::ParsePriority))
        ->type_name("P");
    run->add_option("--policy", request.policy, "pack, spread or strict_spread (default spread)")
        ->check(ParsedBy(cluster::sched::ParsePolicy))
        ->type_name("P");
    run->add_option_function<std::string>(
           "--timeout", [&](const std::string& v) { run_options.timeout = *cluster::ParseDuration(v); },
           "how long to wait for the lease, e.g. 30s (default 60s)")
        ->check(ParsedBy(cluster::ParseDuration))
        ->type_name("D");
    run->add_option("--head", run_options.cluster.head, kHeadHelp)->type_name("HOST:PORT");
    AddLogLevel(run, &run_options.cluster.log_level, kClientLogLevelHelp);
    // Words before `--` are not the command: caught here to say so (group "" hides it from --help).
    run->add_option("stray", stray)->group("");
  }

  CLI::App* check = app.add_subcommand(
      "check", "validate FILE without starting or contacting anything: every error, file:line:col");
  AddConfig(check, &check_options.config_path);
  check->add_flag("--json", check_options.json, "print one line of JSON: file, valid, errors");

  CLI::App* head = app.add_subcommand("head", "run the head of the cluster in FILE");
  AddConfig(head, &head_options.config_path);
  AddLogLevel(head, &head_options.log_level, kLogLevelHelp);

  CLI::App* gateway = app.add_subcommand(
      "gateway", "run an OpenAI-compatible HTTP gateway for the cluster in FILE (docs/gateway.md)");
  AddConfig(gateway, &gateway_options.config_path);
  gateway->add_option("--listen", gateway_options.listen, "host:port to serve on (default: FILE's gateway.listen)")
      ->type_name("HOST:PORT");
  gateway->add_option("--head", gateway_options.head, kHeadHelp)->type_name("HOST:PORT");
  AddLogLevel(gateway, &gateway_options.log_level, kLogLevelHelp);

  CLI::App* node = app.add_subcommand("node", "run node N of the cluster in FILE");
  AddConfig(node, &node_options.config_path);
  node->add_option("--name", node_options.name, "the node's name in FILE")->required()->type_name("N");
  node->add_option("--head", node_options.head, kHeadHelp)->type_name("HOST:PORT");
  AddLogLevel(node, &node_options.log_level, kLogLevelHelp);

  CLI::App* demo = app.add_subcommand("demo", "start a second troupe process and exchange frames with it over UCX");
  AddCount(demo, "--frames", &demo_options.frames, 1, 100000000, "frames to exchange (default 10000)");
  AddCount(demo, "--size", &demo_options.size, 0, 256u << 20, "payload size of each frame in bytes (default 64)");
  demo->add_option("--tls", demo_options.tls, "UCX transports, e.g. shm,self,tcp or tcp (default: UCX's choice)")
      ->type_name("LIST");
  demo->add_flag("--json", demo_options.json, "print the result as one line of JSON");
  AddLogLevel(demo, &demo_options.log_level, "trace, debug, info, warn, error or off (default warn)");

  // Internal: the demo's second process (TLS or "-", log level), started by `troupe demo`.
  CLI::App* demo_peer = app.add_subcommand("demo-peer", "")->group("");
  demo_peer->add_option("args", demo_peer_args)->expected(2)->required();

  CLI::App* version = app.add_subcommand("version", "print the version");
  CLI::App* help = app.add_subcommand("help", "print this text, or a command's flags: troupe help COMMAND");
  help->add_option("command", help_topic)->expected(0, 1);

  app.footer("`troupe COMMAND --help` lists a command's flags.");  // set last: subcommands would inherit it

  // An unknown command: said as such (CLI11 would only say that an argument was not expected).
  if (!args.empty() && args[0][0] != '-') {
    const std::vector<CLI::App*> all = app.get_subcommands({});
    const bool known =
        std::any_of(all.begin(), all.end(), [&](const CLI::App* sub) { return sub->get_name() == args[0]; });
    if (!known) {
      std::cerr << "troupe: unknown command '" << args[0] << "'\n\n" << app.help();
      return 2;
    }
  }
  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last first
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    std::string where = "troupe";
    for (const CLI::App* sub : app.get_subcommands()) where += " " + sub->get_name();
    std::string message = e.what();
    // CLI11 reports a missing required flag before an unknown one; the unknown one (a typo of the
    // required one, often) is what to name.
    if (const std::vector<std::string> unknown = app.remaining(/*recurse=*/true);
        dynamic_cast<const CLI::RequiredError*>(&e) != nullptr && !unknown.empty()) {
      message = CLI::ExtrasError({unknown.rbegin(), unknown.rend()}).what();  // it lists them last first
    }
    std::cerr << where << ": " << message << "\n";
    if (where == "troupe") {
      std::cerr << "\n" << app.help();
    } else {
      std::cerr << "`" << where << " --help` lists its flags\n";
    }
    return 2;
  }
  if (app.get_subcommands().empty()) {
    std::cerr << app.help();
    return 2;
  }
  CLI::App* chosen = app.get_subcommands().front();
  // The demo talks to its peer over a pipe, the cluster commands to their members: a closed pipe
  // must not kill them.
  signal(SIGPIPE, SIG_IGN);
  if (chosen == run) {
    if (!has_dash || command.empty() || !stray.empty()) {
      std::cerr << "troupe run: give the command after --, e.g. troupe run -c FILE --memory 4GiB -- python train.py"
                << (stray.empty() ? "" : " ('" + stray.front() + "' came before --)") << "\n";
      return 2;
    }
    run_options.command = std::move(command);
    return RunOnSlice(std::move(run_options));
  }
  if (has_dash) {
    std::cerr << "troupe " << chosen->get_name() << ": unexpected '--' (only troupe run takes a command after it)\n";
    return 2;
  }
  if (chosen == help) {
    if (help_topic.empty()) {
      app.clear();  // else CLI11's help() describes the subcommand parsed, `help` itself
      std::cout << app.help();
      return 0;
    }
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == help_topic[0] && !sub->get_group().empty()) {
        std::cout << sub->help("troupe");
        return 0;
      }
    }
    std::cerr << "troupe help: unknown command '" << help_topic[0] << "'\n";
    return 2;
  }
  if (chosen == version) {
    std::cout << "troupe " << TROUPE_VERSION << "\n";
    return 0;
  }
  if (chosen == demo) return RunDemo(demo_options, "/proc/self/exe");
  if (chosen == demo_peer) return RunDemoPeer(demo_peer_args);
  if (chosen == check) return RunCheck(check_options);
  if (chosen == head) return RunHead(std::move(head_options));
  if (chosen == gateway) return RunGateway(std::move(gateway_options));
  if (chosen == node) return RunNode(std::move(node_options));
  if (chosen == up) return RunUp(std::move(up_options));
  if (chosen == down) return RunDown(std::move(down_options));
  if (chosen == status) return RunStatus(std::move(status_options));
  if (chosen == slices) return RunSlices(std::move(slices_options));
  if (chosen == events) return RunEvents(std::move(events_options));
  if (chosen == model) {
    model_options.action = model->get_subcommands().front()->get_name();
    return RunModel(std::move(model_options));
  }
  if (chosen == key) {
    key_options.action = key->get_subcommands().front()->get_name();
    return RunKey(std::move(key_options));
  }
  if (chosen == tenant) {
    tenant_options.action = tenant->get_subcommands().front()->get_name();
    return RunTenant(std::move(tenant_options));
  }
  if (chosen == usage) return RunUsage(std::move(usage_options));
  if (chosen == audit) return RunAudit(std::move(audit_options));
  if (chosen == serve) {
    serve_options.action = serve->get_subcommands().front()->get_name();
    return RunServe(std::move(serve_options));
  }
  if (chosen == job) {
    job_options.action = job->get_subcommands().front()->get_name();
    return RunJob(std::move(job_options));
  }
  std::cerr << "troupe: " << chosen->get_name() << " has no handler\n";  // a subcommand added above without one
  return 1;
}

}  // namespace
}  // namespace troupe::cli

int main(int argc, char** argv) { return troupe::cli::Main(argc, argv); }
