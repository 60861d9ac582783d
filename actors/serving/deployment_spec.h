// DeploymentSpec: a serving deployment as its owner describes it (YAML, docs/serving.md "The
// deployment spec", or built in code through the client library), parsed strictly: every problem
// names the file, line, column, field and what was expected, and nothing is deployed.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "actors/serving/autoscaling_config.h"
#include "actors/serving/routing_policy.h"
#include "common/status.h"
#include "runtime/yaml_reader.h"

namespace troupe::serving {

/// What one replica of a version needs (the head's scheduler places each replica on a node
/// that has it). The same meanings and bounds as a training job's worker resources.
struct ReplicaResources {
  /// GPU slices per replica (0: a CPU-only replica), at most 1024.
  uint32_t slices = 0;
  /// The least memory each slice must have, in bytes (0: any slice size). Required when
  /// slices > 1: the scheduler asks for slices x slice_memory of one GPU.
  uint64_t slice_memory_bytes = 0;
  /// The least compute share of its GPU each slice must have, in percent, 0..100 (0: any).
  uint32_t compute_percent = 0;
  /// CPUs reserved for the replica on its node, 1..65536.
  uint32_t cpus = 1;
  /// Host memory reserved for the replica on its node, in bytes (at most 1 PiB).
  uint64_t host_memory_bytes = 0;
};

/// The in-process deterministic test model: it answers every request with max_tokens tokens
/// (the request's max_tokens, else this default), the first after first_token_latency and the
/// rest at tokens_per_second. The failure knobs make a replica misbehave on purpose in tests.
struct TestBackend {
  /// Tokens produced per second after the first (0: all at once, a no-op model for benchmarks).
  double tokens_per_second = 100.0;
  /// Time to the first token (prefill).
  std::chrono::milliseconds first_token_latency{10};
  /// Tokens per response when the request names none (OpenAI's completions default, 16).
  uint32_t max_tokens = 16;
  /// How long the replica takes to become ready (a model load; cold-start tests).
  std::chrono::milliseconds startup_delay{0};
  /// Every fail_every-th request fails with a 500-class error (0: none).
  uint32_t fail_every = 0;
  /// The replica fails (its actor exits) when its crash_after-th request arrives (0: never).
  uint32_t crash_after = 0;
  /// From its stall_after-th request on, the replica takes requests and never answers them
  /// while its health pings still pass: a stuck request path (0: never).
  uint32_t stall_after = 0;
};

/// A process that serves the OpenAI HTTP API (vLLM, SGLang, llama.cpp's server, the example
/// PyTorch server), started on the replica's node and slices and proxied by its replica actor.
struct ProcessBackend {
  /// argv[0] and the rest; argv[0] is searched in PATH on the replica's node (and checked here).
  std::vector<std::string> command;
  /// NAME -> value, with ${VAR} expanded at deploy time from the deployer's environment (an
  /// unset VAR is an error naming it; `$${` is a literal `${`).
  std::map<std::string, std::string> env;
  /// The process's working directory (the spec file's directory when not given).
  std::string working_dir;
  /// The environment variable through which the replica tells the process the port to listen on
  /// (a free port it chose; vLLM takes `--port $PORT` in its command, many servers read PORT).
  std::string port_env = "PORT";
  /// The HTTP path that answers 200 once the server is ready (vLLM's and SGLang's /health).
  std::string health_path = "/health";
  /// How long starting (process start to the first 200 from health_path) may take before the
  /// replica counts as failed: loading a large model takes minutes (10 min; at most 2 h).
  std::chrono::milliseconds ready_timeout{10 * 60 * 1000};
};

enum class BackendKind { kTest, kProcess };
/// "test", "process".
const char* BackendKindName(BackendKind kind);

/// One version of the deployment: what its replicas run and its share of the traffic.
struct VersionSpec {
  /// Unique in the deployment; a DNS label ("v1", "canary").
  std::string name;
  /// A model version from troupe's model repository (`model: NAME:VERSION`): model_name empty
  /// when none is given. The head resolves it to its directory at deploy.
  std::string model_name;
  uint64_t model_version = 0;
  /// Or a model directory (`path: DIR`, made absolute against the spec file's directory; it must
  /// exist on the replicas' nodes, which is checked when a replica starts, not here). At most
  /// one of the model and the path; the test backend needs neither.
  std::string model_path;
  BackendKind backend = BackendKind::kTest;
  /// The backend's settings; only the one `backend` names is used.
  TestBackend test;
  ProcessBackend process;
  ReplicaResources resources;
  /// The version's share of the traffic: weight / (sum of the weights), 0..10000. A version of
  /// weight 0 gets no traffic (a blue-green standby, a rolled-back version); at least one
  /// version has weight above 0.
  uint32_t weight = 1;
};

/// A number of replicas or a percentage of the desired count, as Kubernetes' IntOrString in a
/// Deployment's maxSurge and maxUnavailable ("25%" or 2).
struct CountOrPercent {
  uint32_t value = 0;
  bool percent = false;

  /// For `replicas` desired: the count, or value% of replicas rounded up (`round_up`, as
  /// Kubernetes rounds maxSurge) or down (as it rounds maxUnavailable).
  uint32_t Resolve(uint32_t replicas, bool round_up) const;
  /// "25%" or "2".
  std::string ToString() const;
};

/// How a rolling update replaces the old version's replicas by the new one's, as a Kubernetes
/// Deployment's RollingUpdate strategy (whose defaults these are, 25% and 25%). Capacity never
/// drops below desired - max_unavailable ready replicas, and at most desired + max_surge
/// replicas exist at once. Not both 0.
struct RolloutConfig {
  CountOrPercent max_surge{25, true};
  CountOrPercent max_unavailable{25, true};
};

/// The surge and unavailable counts for `desired` replicas: max_surge rounded up and
/// max_unavailable rounded down; when both come to 0 (a small deployment), max_unavailable is 1
/// so the update can progress (Kubernetes' ResolveFenceposts does the same).
struct RolloutStep {
  uint32_t surge = 0;
  uint32_t unavailable = 0;
};
RolloutStep ResolveRollout(const RolloutConfig& rollout, uint32_t desired);

/// How the deployment actor checks each ready replica.
struct HealthCheckConfig {
  /// Between checks of one replica (Kubernetes' probes and Ray Serve check every 10 s; troupe
  /// every 2 s so that a stuck replica is replaced within about 7 s with the defaults).
  std::chrono::milliseconds interval{2000};
  /// One check fails when it takes longer than this (Kubernetes' timeoutSeconds, 1 s). At most
  /// the interval, so checks of one replica never overlap.
  std::chrono::milliseconds timeout{1000};
  /// Consecutive failed checks before the replica is replaced (Kubernetes' failureThreshold
  /// and Ray Serve's, 3).
  uint32_t failure_threshold = 3;
  /// The check also sends a real request through the replica's request path (a one-token
  /// completion), so a replica whose health endpoint answers while its request path is stuck
  /// fails it (Ray Serve's health pings pass then).
  bool probe_request_path = true;
};

/// A serving deployment.
struct DeploymentSpec {
  /// Unique in the cluster: a DNS label ([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?, as Kubernetes names
  /// objects).
  std::string name;
  std::string tenant = "default";
  /// At least one, at most kMaxDeploymentVersions.
  std::vector<VersionSpec> versions;
  /// The `replicas` section fills min_replicas, max_replicas, initial_replicas; the
  /// `autoscaling` section the rest. With min == max the deployment does not autoscale.
  AutoscalingConfig autoscaling;
  /// How a router picks a replica with room (fewer than max_ongoing_requests in flight;
  /// routing_policy.h). Power of two choices (Mitzenmacher 2001) is Ray Serve's default router:
  /// two replicas at random, the one with fewer requests in flight.
  RoutingPolicyKind routing = RoutingPolicyKind::kPowerOfTwoChoices;
  /// Requests in flight at one replica at most (Ray Serve's max_ongoing_requests, default 5
  /// since Ray 2.32, which leaves room above its target of 2 per replica for the autoscaler to
  /// see load before the router queues). At least autoscaling.target_ongoing_requests.
  uint32_t max_ongoing_requests = 5;
  /// Requests a router holds while every replica is at max_ongoing_requests, or while none is
  /// ready (scale from zero). Past this a request is refused at once (ResourceExhausted, HTTP
  /// 503). Always bounded (Ray Serve's default -1, unbounded, is not allowed): 1000 by default,
  /// the full load of 200 replicas at the default max_ongoing_requests (Knative's queue-proxy
  /// holds 10 x its container concurrency per pod). 0: no queue, and then min_replicas must be
  /// at least 1 (scale from zero holds requests here).
  uint32_t max_queued_requests = 1000;
  /// A request's deadline when its caller gave none, queueing included (Knative's revision
  /// timeoutSeconds default, 300 s: LLM generations are long).
  std::chrono::milliseconds request_timeout{300000};
  HealthCheckConfig health_check;
  /// How long a removed replica may take to finish its in-flight requests before it is stopped
  /// anyway (Ray Serve's graceful_shutdown_timeout_s, 20 s).
  std::chrono::milliseconds drain_timeout{20000};
  RolloutConfig rollout;
};

/// Bounds on a deployment spec (docs/serving.md lists them all): beyond them the spec is refused.
inline constexpr uint32_t kMaxDeploymentReplicas = 4096;
inline constexpr size_t kMaxDeploymentVersions = 16;
inline constexpr size_t kMaxDeploymentSpecFileBytes = 1 << 20;

/// Every problem in the deployment spec text `yaml` (empty when valid; `*spec` then holds it).
/// `source` names it in errors; `base_dir` resolves a relative working_dir or path and is the
/// default working_dir. `${VAR}` in env is expanded from this process's environment. Contacts
/// nothing: whether the cluster can hold it (slices, quota, the model version) is the head's
/// check at deploy.
std::vector<runtime::ConfigError> ValidateDeploymentSpecText(const std::string& yaml, const std::string& source,
                                                             const std::string& base_dir,
                                                             DeploymentSpec* spec = nullptr);
/// The same for the file at `path` (at most kMaxDeploymentSpecFileBytes; its directory is
/// base_dir).
std::vector<runtime::ConfigError> ValidateDeploymentSpecFile(const std::string& path, DeploymentSpec* spec = nullptr);
/// ValidateDeploymentSpecFile as a Status: InvalidArgument listing every problem, one per line.
StatusOr<DeploymentSpec> LoadDeploymentSpec(const std::string& path);
/// ValidateDeploymentSpecText as a Status, relative paths against the current directory (the
/// client library's entry point for YAML it holds in memory).
StatusOr<DeploymentSpec> ParseDeploymentSpec(const std::string& text, const std::string& source_name);

/// The rules a parsed spec passes, for a spec built in code (or read back from JSON): bounds,
/// cross-field rules (min <= initial <= max, weights, rollout not both 0, ...). OK or
/// InvalidArgument listing every problem, one per line, as `field: what was expected`. The
/// YAML parser applies the same rules (with line and column); only the checks that need the
/// YAML or this host (unknown keys, ${VAR}, the command found in PATH) are the parser's alone.
Status ValidateDeploymentSpec(const DeploymentSpec& spec);

/// The spec as JSON (`troupe serve show --json`, the head's records): durations as text ("60s",
/// "100ms"), sizes in bytes, the backend and the routing policy by their names, max_surge and
/// max_unavailable as "25%" or a number.
std::string DeploymentSpecToJson(const DeploymentSpec& spec);
/// DeploymentSpecToJson's output back; a key left out takes its default. InvalidArgument when
/// it is not such JSON or the spec breaks a rule (ValidateDeploymentSpec).
StatusOr<DeploymentSpec> DeploymentSpecFromJson(const std::string& json);

}  // namespace troupe::serving
