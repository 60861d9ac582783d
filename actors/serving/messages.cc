// Serving protocol codecs (serving.capnp).
#include "actors/serving/messages.h"

#include "actors/serving/serving.capnp.h"
#include "actors/serving/wire_codecs.h"

namespace troupe::serving {

namespace {

using runtime::RefCodec;

kj::ArrayPtr<const kj::byte> Bytes(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string String(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

wire::ReplicaState ToWire(ReplicaState state) {
  switch (state) {
    case ReplicaState::kStarting: return wire::ReplicaState::STARTING;
    case ReplicaState::kReady: return wire::ReplicaState::READY;
    case ReplicaState::kDraining: return wire::ReplicaState::DRAINING;
    case ReplicaState::kStopped: return wire::ReplicaState::STOPPED;
  }
  return wire::ReplicaState::STOPPED;
}

// A peer may send an enumerant this build does not know (a newer peer, or a bad one).
StatusOr<ReplicaState> FromWire(wire::ReplicaState state, const char* message) {
  switch (state) {
    case wire::ReplicaState::STARTING: return ReplicaState::kStarting;
    case wire::ReplicaState::READY: return ReplicaState::kReady;
    case wire::ReplicaState::DRAINING: return ReplicaState::kDraining;
    case wire::ReplicaState::STOPPED: return ReplicaState::kStopped;
  }
  return InvalidArgumentError(std::string(message) + ": unknown replica state " +
                              std::to_string(static_cast<uint16_t>(state)) +
                              " (this build knows starting, ready, draining, stopped)");
}

}  // namespace

void EncodeInferenceRequest(const InferenceRequest& m, wire::InferenceRequest::Builder b, RefCodec& refs) {
  b.setId(m.id);
  b.setDeployment(m.deployment);
  b.setPath(m.path);
  b.setBody(Bytes(m.body));
  b.setStream(m.stream);
  b.setDeadlineUnixMs(m.deadline_unix_ms);
  refs.EncodeRef(m.stream_to, b.initStreamTo());
}

InferenceRequest DecodeInferenceRequest(wire::InferenceRequest::Reader in, RefCodec& refs) {
  InferenceRequest m;
  m.id = in.getId();
  m.deployment = in.getDeployment();
  m.path = in.getPath();
  m.body = String(in.getBody());
  m.stream = in.getStream();
  m.deadline_unix_ms = in.getDeadlineUnixMs();
  m.stream_to = refs.DecodeRef(in.getStreamTo());
  return m;
}

void EncodeInferenceResponse(const InferenceResponse& m, wire::InferenceResponse::Builder b) {
  b.setRequestId(m.request_id);
  b.setHttpStatus(m.http_status);
  b.setBody(Bytes(m.body));
  b.setPromptTokens(m.prompt_tokens);
  b.setCompletionTokens(m.completion_tokens);
  b.setFirstTokenUs(m.first_token_us);
  b.setReplica(m.replica);
}

InferenceResponse DecodeInferenceResponse(wire::InferenceResponse::Reader in) {
  return InferenceResponse{in.getRequestId(),    in.getHttpStatus(),       String(in.getBody()),
                           in.getPromptTokens(), in.getCompletionTokens(), in.getFirstTokenUs(),
                           in.getReplica()};
}

namespace {

Status AddDataMessages(runtime::CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<InferenceRequest, wire::InferenceRequest>(
      kInferenceRequest, "serving.InferenceRequest",
      [](const InferenceRequest& m, wire::InferenceRequest::Builder b, RefCodec& refs) {
        EncodeInferenceRequest(m, b, refs);
      },
      [](wire::InferenceRequest::Reader in, RefCodec& refs) -> StatusOr<InferenceRequest> {
        return DecodeInferenceRequest(in, refs);
      })));
  RETURN_IF_ERROR((r.Add<ResponseChunk, wire::ResponseChunk>(
      kResponseChunk, "serving.ResponseChunk",
      [](const ResponseChunk& m, wire::ResponseChunk::Builder b, RefCodec&) {
        b.setRequestId(m.request_id);
        b.setIndex(m.index);
        b.setData(Bytes(m.data));
      },
      [](wire::ResponseChunk::Reader in, RefCodec&) -> StatusOr<ResponseChunk> {
        return ResponseChunk{in.getRequestId(), in.getIndex(), String(in.getData())};
      })));
  RETURN_IF_ERROR((r.Add<InferenceResponse, wire::InferenceResponse>(
      kInferenceResponse, "serving.InferenceResponse",
      [](const InferenceResponse& m, wire::InferenceResponse::Builder b, RefCodec&) { EncodeInferenceResponse(m, b); },
      [](wire::InferenceResponse::Reader in, RefCodec&) -> StatusOr<InferenceResponse> {
        return DecodeInferenceResponse(in);
      })));
  RETURN_IF_ERROR((r.Add<ReplicaSet, wire::ReplicaSet>(
      kReplicaSet, "serving.ReplicaSet",
      [](const ReplicaSet& m, wire::ReplicaSet::Builder b, RefCodec& refs) {
        b.setDeployment(m.deployment);
        b.setGeneration(m.generation);
        auto list = b.initReplicas(static_cast<unsigned>(m.replicas.size()));
        for (size_t i = 0; i < m.replicas.size(); ++i) {
          const ReplicaInfo& info = m.replicas[i];
          auto out = list[static_cast<unsigned>(i)];
          refs.EncodeRef(info.replica, out.initReplica());
          out.setName(info.name);
          out.setVersion(info.version);
          out.setWeight(info.weight);
          out.setMaxOngoingRequests(info.max_ongoing_requests);
        }
      },
      [](wire::ReplicaSet::Reader in, RefCodec& refs) -> StatusOr<ReplicaSet> {
        ReplicaSet m;
        m.deployment = in.getDeployment();
        m.generation = in.getGeneration();
        for (auto info : runtime::CheckedList(in.getReplicas())) {
          m.replicas.push_back(ReplicaInfo{refs.DecodeRef(info.getReplica()), info.getName(), info.getVersion(),
                                           info.getWeight(), info.getMaxOngoingRequests()});
        }
        return m;
      })));
  RETURN_IF_ERROR((r.Add<LoadReport, wire::LoadReport>(
      kLoadReport, "serving.LoadReport",
      [](const LoadReport& m, wire::LoadReport::Builder b, RefCodec&) {
        b.setDeployment(m.deployment);
        b.setSource(m.source);
        b.setAtUnixMs(m.at_unix_ms);
        b.setOngoing(m.ongoing);
        b.setQueued(m.queued);
        b.setCompletedPerSecond(m.completed_per_second);
      },
      [](wire::LoadReport::Reader in, RefCodec&) -> StatusOr<LoadReport> {
        return LoadReport{in.getDeployment(), in.getSource(), in.getAtUnixMs(),
                          in.getOngoing(),    in.getQueued(), in.getCompletedPerSecond()};
      })));
  RETURN_IF_ERROR((r.Add<ReplicaCount, wire::ReplicaCount>(
      kReplicaCount, "serving.ReplicaCount",
      [](const ReplicaCount& m, wire::ReplicaCount::Builder b, RefCodec&) {
        b.setDeployment(m.deployment);
        b.setCurrent(m.current);
        b.setReady(m.ready);
      },
      [](wire::ReplicaCount::Reader in, RefCodec&) -> StatusOr<ReplicaCount> {
        return ReplicaCount{in.getDeployment(), in.getCurrent(), in.getReady()};
      })));
  return r.Add<ScaleDecision, wire::ScaleDecision>(
      kScaleDecision, "serving.ScaleDecision",
      [](const ScaleDecision& m, wire::ScaleDecision::Builder b, RefCodec&) {
        b.setDeployment(m.deployment);
        b.setDesired(m.desired);
        b.setCurrent(m.current);
        b.setPanic(m.panic);
        b.setReason(m.reason);
      },
      [](wire::ScaleDecision::Reader in, RefCodec&) -> StatusOr<ScaleDecision> {
        return ScaleDecision{in.getDeployment(), in.getDesired(), in.getCurrent(), in.getPanic(), in.getReason()};
      });
}

Status AddReplicaControl(runtime::CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<CancelRequest, wire::CancelRequest>(
      kCancelRequest, "serving.CancelRequest",
      [](const CancelRequest& m, wire::CancelRequest::Builder b, RefCodec&) { b.setRequestId(m.request_id); },
      [](wire::CancelRequest::Reader in, RefCodec&) -> StatusOr<CancelRequest> {
        return CancelRequest{in.getRequestId()};
      })));
  RETURN_IF_ERROR((r.Add<Drain, wire::Drain>(
      kDrain, "serving.Drain", [](const Drain& m, wire::Drain::Builder b, RefCodec&) { b.setTimeoutMs(m.timeout_ms); },
      [](wire::Drain::Reader in, RefCodec&) -> StatusOr<Drain> { return Drain{in.getTimeoutMs()}; })));
  RETURN_IF_ERROR((r.Add<DrainReply, wire::DrainReply>(
      kDrainReply, "serving.DrainReply",
      [](const DrainReply& m, wire::DrainReply::Builder b, RefCodec&) {
        b.setFinished(m.finished);
        b.setAbandoned(m.abandoned);
      },
      [](wire::DrainReply::Reader in, RefCodec&) -> StatusOr<DrainReply> {
        return DrainReply{in.getFinished(), in.getAbandoned()};
      })));
  RETURN_IF_ERROR((r.Add<HealthProbe, wire::HealthProbe>(
      kHealthProbe, "serving.HealthProbe",
      [](const HealthProbe& m, wire::HealthProbe::Builder b, RefCodec&) { b.setTimeoutMs(m.timeout_ms); },
      [](wire::HealthProbe::Reader in, RefCodec&) -> StatusOr<HealthProbe> {
        return HealthProbe{in.getTimeoutMs()};
      })));
  RETURN_IF_ERROR((r.Add<HealthProbeReply, wire::HealthProbeReply>(
      kHealthProbeReply, "serving.HealthProbeReply",
      [](const HealthProbeReply& m, wire::HealthProbeReply::Builder b, RefCodec&) {
        b.setReplica(m.replica);
        b.setState(ToWire(m.state));
        b.setLatencyUs(m.latency_us);
        b.setOngoing(m.ongoing);
      },
      [](wire::HealthProbeReply::Reader in, RefCodec&) -> StatusOr<HealthProbeReply> {
        ASSIGN_OR_RETURN(ReplicaState state, FromWire(in.getState(), "serving.HealthProbeReply"));
        return HealthProbeReply{in.getReplica(), state, in.getLatencyUs(), in.getOngoing()};
      })));
  RETURN_IF_ERROR((r.Add<ReplicaQuery, wire::ReplicaQuery>(
      kReplicaQuery, "serving.ReplicaQuery", [](const ReplicaQuery&, wire::ReplicaQuery::Builder, RefCodec&) {},
      [](wire::ReplicaQuery::Reader, RefCodec&) -> StatusOr<ReplicaQuery> { return ReplicaQuery{}; })));
  RETURN_IF_ERROR((r.Add<ReplicaStatus, wire::ReplicaStatus>(
      kReplicaStatus, "serving.ReplicaStatus",
      [](const ReplicaStatus& m, wire::ReplicaStatus::Builder b, RefCodec&) {
        b.setName(m.name);
        b.setState(ToWire(m.state));
        b.setOngoing(m.ongoing);
        b.setCompleted(m.completed);
        b.setFailed(m.failed);
      },
      [](wire::ReplicaStatus::Reader in, RefCodec&) -> StatusOr<ReplicaStatus> {
        ASSIGN_OR_RETURN(ReplicaState state, FromWire(in.getState(), "serving.ReplicaStatus"));
        return ReplicaStatus{in.getName(), state, in.getOngoing(), in.getCompleted(), in.getFailed()};
      })));
  return r.Add<ReplicaStateChanged, wire::ReplicaStateChanged>(
      kReplicaStateChanged, "serving.ReplicaStateChanged",
      [](const ReplicaStateChanged& m, wire::ReplicaStateChanged::Builder b, RefCodec&) {
        b.setName(m.name);
        b.setState(ToWire(m.state));
        b.setReason(m.reason);
      },
      [](wire::ReplicaStateChanged::Reader in, RefCodec&) -> StatusOr<ReplicaStateChanged> {
        ASSIGN_OR_RETURN(ReplicaState state, FromWire(in.getState(), "serving.ReplicaStateChanged"));
        return ReplicaStateChanged{in.getName(), state, in.getReason()};
      });
}

Status AddDeploymentMessages(runtime::CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<StartReplica, wire::StartReplica>(
      kStartReplica, "serving.StartReplica",
      [](const StartReplica& m, wire::StartReplica::Builder b, RefCodec& refs) {
        b.setDeployment(m.deployment);
        b.setVersion(m.version);
        b.setName(m.name);
        b.setLeaseId(m.lease_id);
        b.setMaxOngoingRequests(m.max_ongoing_requests);
        b.setDrainTimeoutMs(m.drain_timeout_ms);
        b.setStartTimeoutMs(m.start_timeout_ms);
        b.setTokensPerSecond(m.tokens_per_second);
        b.setFirstTokenLatencyUs(m.first_token_latency_us);
        b.setMaxTokens(m.max_tokens);
        b.setStallAfter(m.stall_after);
        b.setSeed(m.seed);
        refs.EncodeRef(m.owner, b.initOwner());
        refs.EncodeRef(m.autoscaler, b.initAutoscaler());
        auto command = b.initProcessCommand(static_cast<unsigned>(m.process_command.size()));
        for (unsigned i = 0; i < m.process_command.size(); ++i) command.set(i, m.process_command[i]);
        auto env = b.initProcessEnv(static_cast<unsigned>(m.process_env.size()));
        for (unsigned i = 0; i < m.process_env.size(); ++i) env.set(i, m.process_env[i]);
        b.setProcessWorkingDir(m.process_working_dir);
        b.setProcessPortEnv(m.process_port_env);
        b.setProcessHealthPath(m.process_health_path);
        b.setProcessReadyTimeoutMs(m.process_ready_timeout_ms);
        b.setGpuIndex(m.gpu_index);
        b.setGpuId(m.gpu_id);
        b.setMemoryBytes(m.memory_bytes);
        b.setComputePercent(m.compute_percent);
        b.setSimulated(m.simulated);
        b.setStartupDelayMs(m.startup_delay_ms);
        b.setFailEvery(m.fail_every);
        b.setCrashAfter(m.crash_after);
      },
      [](wire::StartReplica::Reader in, RefCodec& refs) -> StatusOr<StartReplica> {
        StartReplica m;
        m.deployment = in.getDeployment();
        m.version = in.getVersion();
        m.name = in.getName();
        m.lease_id = in.getLeaseId();
        m.max_ongoing_requests = in.getMaxOngoingRequests();
        m.drain_timeout_ms = in.getDrainTimeoutMs();
        m.start_timeout_ms = in.getStartTimeoutMs();
        m.tokens_per_second = in.getTokensPerSecond();
        m.first_token_latency_us = in.getFirstTokenLatencyUs();
        m.max_tokens = in.getMaxTokens();
        m.stall_after = in.getStallAfter();
        m.startup_delay_ms = in.getStartupDelayMs();
        m.fail_every = in.getFailEvery();
        m.crash_after = in.getCrashAfter();
        m.seed = in.getSeed();
        m.owner = refs.DecodeRef(in.getOwner());
        m.autoscaler = refs.DecodeRef(in.getAutoscaler());
        for (auto arg : in.getProcessCommand()) m.process_command.emplace_back(arg);
        for (auto entry : in.getProcessEnv()) m.process_env.emplace_back(entry);
        m.process_working_dir = in.getProcessWorkingDir();
        m.process_port_env = in.getProcessPortEnv();
        m.process_health_path = in.getProcessHealthPath();
        m.process_ready_timeout_ms = in.getProcessReadyTimeoutMs();
        m.gpu_index = in.getGpuIndex();
        m.gpu_id = in.getGpuId();
        m.memory_bytes = in.getMemoryBytes();
        m.compute_percent = in.getComputePercent();
        m.simulated = in.getSimulated();
        return m;
      })));
  RETURN_IF_ERROR((r.Add<ReplicaStarted, wire::ReplicaStarted>(
      kReplicaStarted, "serving.ReplicaStarted",
      [](const ReplicaStarted& m, wire::ReplicaStarted::Builder b, RefCodec& refs) {
        b.setName(m.name);
        refs.EncodeRef(m.replica, b.initReplica());
      },
      [](wire::ReplicaStarted::Reader in, RefCodec& refs) -> StatusOr<ReplicaStarted> {
        return ReplicaStarted{in.getName(), refs.DecodeRef(in.getReplica())};
      })));
  RETURN_IF_ERROR((r.Add<StopReplica, wire::StopReplica>(
      kStopReplica, "serving.StopReplica",
      [](const StopReplica& m, wire::StopReplica::Builder b, RefCodec&) { b.setName(m.name); },
      [](wire::StopReplica::Reader in, RefCodec&) -> StatusOr<StopReplica> { return StopReplica{in.getName()}; })));
  RETURN_IF_ERROR((r.Add<AdoptReplica, wire::AdoptReplica>(
      kAdoptReplica, "serving.AdoptReplica",
      [](const AdoptReplica& m, wire::AdoptReplica::Builder b, RefCodec& refs) {
        b.setName(m.name);
        refs.EncodeRef(m.owner, b.initOwner());
        refs.EncodeRef(m.autoscaler, b.initAutoscaler());
      },
      [](wire::AdoptReplica::Reader in, RefCodec& refs) -> StatusOr<AdoptReplica> {
        return AdoptReplica{in.getName(), refs.DecodeRef(in.getOwner()), refs.DecodeRef(in.getAutoscaler())};
      })));
  RETURN_IF_ERROR((r.Add<DeploymentCommand, wire::DeploymentCommand>(
      kDeploymentCommand, "serving.DeploymentCommand",
      [](const DeploymentCommand& m, wire::DeploymentCommand::Builder b, RefCodec&) {
        b.setOp(m.op);
        b.setName(m.name);
        b.setBody(Bytes(m.body));
        b.setCaller(m.caller);
      },
      [](wire::DeploymentCommand::Reader in, RefCodec&) -> StatusOr<DeploymentCommand> {
        return DeploymentCommand{in.getOp(), in.getName(), String(in.getBody()), in.getCaller()};
      })));
  return r.Add<DeploymentCommandReply, wire::DeploymentCommandReply>(
      kDeploymentCommandReply, "serving.DeploymentCommandReply",
      [](const DeploymentCommandReply& m, wire::DeploymentCommandReply::Builder b, RefCodec&) {
        b.setBody(Bytes(m.body));
      },
      [](wire::DeploymentCommandReply::Reader in, RefCodec&) -> StatusOr<DeploymentCommandReply> {
        return DeploymentCommandReply{String(in.getBody())};
      });
}

}  // namespace

void FillRunningReplicas(const std::vector<RunningReplica>& in, capnp::List<wire::RunningReplica>::Builder out,
                         RefCodec& refs) {
  for (size_t i = 0; i < in.size(); ++i) {
    auto b = out[static_cast<unsigned>(i)];
    b.setName(in[i].name);
    b.setDeployment(in[i].deployment);
    b.setLeaseId(in[i].lease_id);
    refs.EncodeRef(in[i].replica, b.initReplica());
  }
}

std::vector<RunningReplica> ReadRunningReplicas(capnp::List<wire::RunningReplica>::Reader in, RefCodec& refs) {
  std::vector<RunningReplica> out;
  for (auto r : runtime::CheckedList(in)) {
    out.push_back(RunningReplica{r.getName(), r.getDeployment(), r.getLeaseId(), refs.DecodeRef(r.getReplica())});
  }
  return out;
}

Status AddServingCodecs(runtime::CodecRegistry& registry) {
  RETURN_IF_ERROR(AddDataMessages(registry));
  RETURN_IF_ERROR(AddDeploymentMessages(registry));
  return AddReplicaControl(registry);
}

}  // namespace troupe::serving
