// Training protocol codecs.
#include "actors/training/messages.h"

#include "collectives/rendezvous.h"


namespace troupe::training {

namespace {

template <class Builder>
void FillTexts(const std::vector<std::string>& in, Builder out) {
  for (size_t i = 0; i < in.size(); ++i) out.set(static_cast<unsigned>(i), in[i]);
}

template <class Reader>
std::vector<std::string> ReadTexts(Reader in) {
  std::vector<std::string> out;
  out.reserve(in.size());
  for (auto t : in) out.emplace_back(t.cStr(), t.size());
  return out;
}

void FillExit(const WorkerExited& m, wire::WorkerExited::Builder b) {
  b.setJob(m.job);
  b.setAttempt(m.attempt);
  b.setRank(m.rank);
  b.setExitCode(m.exit_code);
  b.setSignal(m.signal);
  b.setHung(m.hung);
  b.setReason(m.reason);
  b.setInfra(m.infra);
}

WorkerExited ReadExit(wire::WorkerExited::Reader in) {
  return WorkerExited{in.getJob(), in.getAttempt(), in.getRank(), in.getExitCode(),
                      in.getSignal(), in.getHung(), in.getReason(), in.getInfra()};
}

}  // namespace

void FillRunningWorkers(const std::vector<RunningWorker>& in, capnp::List<wire::RunningWorker>::Builder out,
                        runtime::RefCodec& refs) {
  for (size_t i = 0; i < in.size(); ++i) {
    auto b = out[static_cast<unsigned>(i)];
    b.setJob(in[i].job);
    b.setAttempt(in[i].attempt);
    b.setRank(in[i].rank);
    b.setPid(in[i].pid);
    b.setLogPath(in[i].log_path);
    refs.EncodeRef(in[i].worker, b.initWorker());
  }
}

std::vector<RunningWorker> ReadRunningWorkers(capnp::List<wire::RunningWorker>::Reader in, runtime::RefCodec& refs) {
  std::vector<RunningWorker> out;
  for (auto w : runtime::CheckedList(in)) {
    out.push_back(RunningWorker{w.getJob(), w.getAttempt(), w.getRank(), w.getPid(), w.getLogPath(),
                                refs.DecodeRef(w.getWorker())});
  }
  return out;
}

Status AddTrainingCodecs(runtime::CodecRegistry& r) {
  using runtime::RefCodec;
  // Actor workers form their group through the attempt's rendezvous store on the head.
  RETURN_IF_ERROR(collectives::AddRendezvousCodecs(r));
  RETURN_IF_ERROR((r.Add<StartWorker, wire::StartWorker>(
      kStartWorker, "training.StartWorker",
      [](const StartWorker& m, wire::StartWorker::Builder b, RefCodec& refs) {
        b.setJob(m.job);
        b.setAttempt(m.attempt);
        b.setRank(m.rank);
        FillTexts(m.argv, b.initArgv(static_cast<unsigned>(m.argv.size())));
        FillTexts(m.env, b.initEnv(static_cast<unsigned>(m.env.size())));
        b.setWorkingDir(m.working_dir);
        b.setWatchdogMs(m.watchdog_ms);
        refs.EncodeRef(m.supervisor, b.initSupervisor());
        b.setLeaseId(m.lease_id);
        b.setGpuIndex(m.gpu_index);
        b.setGpuId(m.gpu_id);
        b.setMemoryBytes(m.memory_bytes);
        b.setComputePercent(m.compute_percent);
        b.setSimulated(m.simulated);
        b.setPickMasterPort(m.pick_master_port);
        FillTexts(m.preload, b.initPreload(static_cast<unsigned>(m.preload.size())));
      },
      [](wire::StartWorker::Reader in, RefCodec& refs) -> StatusOr<StartWorker> {
        StartWorker m;
        m.job = in.getJob();
        m.attempt = in.getAttempt();
        m.rank = in.getRank();
        // A list of Text is a list of pointers: CheckedList's bound (one word each) holds.
        m.argv = ReadTexts(in.getArgv());
        m.env = ReadTexts(in.getEnv());
        m.working_dir = in.getWorkingDir();
        m.watchdog_ms = in.getWatchdogMs();
        m.supervisor = refs.DecodeRef(in.getSupervisor());
        m.lease_id = in.getLeaseId();
        m.gpu_index = in.getGpuIndex();
        m.gpu_id = in.getGpuId();
        m.memory_bytes = in.getMemoryBytes();
        m.compute_percent = in.getComputePercent();
        m.simulated = in.getSimulated();
        m.pick_master_port = in.getPickMasterPort();
        m.preload = ReadTexts(in.getPreload());
        return m;
      })));
  RETURN_IF_ERROR((r.Add<WorkerStarted, wire::WorkerStarted>(
      kWorkerStarted, "training.WorkerStarted",
      [](const WorkerStarted& m, wire::WorkerStarted::Builder b, RefCodec&) {
        b.setRank(m.rank);
        b.setPid(m.pid);
        b.setMasterPort(m.master_port);
        b.setLogPath(m.log_path);
        b.setStandby(m.standby);
      },
      [](wire::WorkerStarted::Reader in, RefCodec&) -> StatusOr<WorkerStarted> {
        return WorkerStarted{in.getRank(), in.getPid(), in.getMasterPort(), in.getLogPath(), in.getStandby()};
      })));
  RETURN_IF_ERROR((r.Add<StopWorkers, wire::StopWorkers>(
      kStopWorkers, "training.StopWorkers",
      [](const StopWorkers& m, wire::StopWorkers::Builder b, RefCodec&) {
        b.setJob(m.job);
        b.setAttempt(m.attempt);
        b.setFinal(m.final);
      },
      [](wire::StopWorkers::Reader in, RefCodec&) -> StatusOr<StopWorkers> {
        return StopWorkers{in.getJob(), in.getAttempt(), in.getFinal()};
      })));
  RETURN_IF_ERROR((r.Add<WorkersStopped, wire::WorkersStopped>(
      kWorkersStopped, "training.WorkersStopped",
      [](const WorkersStopped& m, wire::WorkersStopped::Builder b, RefCodec&) { b.setCount(m.count); },
      [](wire::WorkersStopped::Reader in, RefCodec&) -> StatusOr<WorkersStopped> {
        return WorkersStopped{in.getCount()};
      })));
  RETURN_IF_ERROR((r.Add<WorkerExited, wire::WorkerExited>(
      kWorkerExited, "training.WorkerExited",
      [](const WorkerExited& m, wire::WorkerExited::Builder b, RefCodec&) { FillExit(m, b); },
      [](wire::WorkerExited::Reader in, RefCodec&) -> StatusOr<WorkerExited> { return ReadExit(in); })));
  RETURN_IF_ERROR((r.Add<AdoptWorkers, wire::AdoptWorkers>(
      kAdoptWorkers, "training.AdoptWorkers",
      [](const AdoptWorkers& m, wire::AdoptWorkers::Builder b, RefCodec& refs) {
        b.setJob(m.job);
        b.setAttempt(m.attempt);
        refs.EncodeRef(m.supervisor, b.initSupervisor());
      },
      [](wire::AdoptWorkers::Reader in, RefCodec& refs) -> StatusOr<AdoptWorkers> {
        return AdoptWorkers{in.getJob(), in.getAttempt(), refs.DecodeRef(in.getSupervisor())};
      })));
  RETURN_IF_ERROR((r.Add<WorkersAdopted, wire::WorkersAdopted>(
      kWorkersAdopted, "training.WorkersAdopted",
      [](const WorkersAdopted& m, wire::WorkersAdopted::Builder b, RefCodec& refs) {
        FillRunningWorkers(m.running, b.initRunning(static_cast<unsigned>(m.running.size())), refs);
        auto exited = b.initExited(static_cast<unsigned>(m.exited.size()));
        for (size_t i = 0; i < m.exited.size(); ++i) FillExit(m.exited[i], exited[static_cast<unsigned>(i)]);
      },
      [](wire::WorkersAdopted::Reader in, RefCodec& refs) -> StatusOr<WorkersAdopted> {
        WorkersAdopted out;
        out.running = ReadRunningWorkers(in.getRunning(), refs);
        for (auto e : runtime::CheckedList(in.getExited())) out.exited.push_back(ReadExit(e));
        return out;
      })));
  RETURN_IF_ERROR((r.Add<ActorWorkerStart, wire::ActorWorkerStart>(
      kActorWorkerStart, "training.ActorWorkerStart",
      [](const ActorWorkerStart& m, wire::ActorWorkerStart::Builder b, RefCodec& refs) {
        b.setJob(m.job);
        b.setType(m.type);
        b.setAttempt(m.attempt);
        b.setRank(m.rank);
        b.setWorldSize(m.world_size);
        FillTexts(m.env, b.initEnv(static_cast<unsigned>(m.env.size())));
        b.setCheckpointDir(m.checkpoint_dir);
        b.setResumeDir(m.resume_dir);
        b.setResumeStep(m.resume_step);
        refs.EncodeRef(m.supervisor, b.initSupervisor());
        refs.EncodeRef(m.rendezvous, b.initRendezvous());
        b.setGpuIndex(m.gpu_index);
        b.setGpuId(m.gpu_id);
        b.setMemoryBytes(m.memory_bytes);
        b.setSimulated(m.simulated);
        b.setCheckpointNode(m.checkpoint_node);
        b.setBackend(m.backend);
      },
      [](wire::ActorWorkerStart::Reader in, RefCodec& refs) -> StatusOr<ActorWorkerStart> {
        ActorWorkerStart m;
        m.job = in.getJob();
        m.type = in.getType();
        m.attempt = in.getAttempt();
        m.rank = in.getRank();
        m.world_size = in.getWorldSize();
        m.env = ReadTexts(in.getEnv());
        m.checkpoint_dir = in.getCheckpointDir();
        m.resume_dir = in.getResumeDir();
        m.resume_step = in.getResumeStep();
        m.supervisor = refs.DecodeRef(in.getSupervisor());
        m.rendezvous = refs.DecodeRef(in.getRendezvous());
        m.gpu_index = in.getGpuIndex();
        m.gpu_id = in.getGpuId();
        m.memory_bytes = in.getMemoryBytes();
        m.simulated = in.getSimulated();
        m.checkpoint_node = in.getCheckpointNode();
        m.backend = in.getBackend();
        return m;
      })));
  RETURN_IF_ERROR((r.Add<StopActorWorker, wire::StopActorWorker>(
      kStopActorWorker, "training.StopActorWorker",
      [](const StopActorWorker& m, wire::StopActorWorker::Builder b, RefCodec&) { b.setReason(m.reason); },
      [](wire::StopActorWorker::Reader in, RefCodec&) -> StatusOr<StopActorWorker> {
        return StopActorWorker{in.getReason()};
      })));
  RETURN_IF_ERROR((r.Add<ActorWorkerPeers, wire::ActorWorkerPeers>(
      kActorWorkerPeers, "training.ActorWorkerPeers",
      [](const ActorWorkerPeers& m, wire::ActorWorkerPeers::Builder b, RefCodec& refs) {
        b.setAttempt(m.attempt);
        auto list = b.initWorkers(static_cast<unsigned>(m.workers.size()));
        for (size_t i = 0; i < m.workers.size(); ++i) refs.EncodeRef(m.workers[i], list[static_cast<unsigned>(i)]);
      },
      [](wire::ActorWorkerPeers::Reader in, RefCodec& refs) -> StatusOr<ActorWorkerPeers> {
        ActorWorkerPeers m;
        m.attempt = in.getAttempt();
        for (auto a : runtime::CheckedList(in.getWorkers())) m.workers.push_back(refs.DecodeRef(a));
        return m;
      })));
  RETURN_IF_ERROR((r.Add<ActorWorkerProgress, wire::ActorWorkerProgress>(
      kActorWorkerProgress, "training.ActorWorkerProgress",
      [](const ActorWorkerProgress& m, wire::ActorWorkerProgress::Builder b, RefCodec&) {
        b.setAttempt(m.attempt);
        b.setRank(m.rank);
        b.setPoint(m.point);
      },
      [](wire::ActorWorkerProgress::Reader in, RefCodec&) -> StatusOr<ActorWorkerProgress> {
        return ActorWorkerProgress{in.getAttempt(), in.getRank(), in.getPoint()};
      })));
  RETURN_IF_ERROR((r.Add<JobCommand, wire::JobCommand>(
      kJobCommand, "training.JobCommand",
      [](const JobCommand& m, wire::JobCommand::Builder b, RefCodec&) {
        b.setOp(m.op);
        b.setName(m.name);
        b.setBody(m.body);
        b.setCaller(m.caller);
      },
      [](wire::JobCommand::Reader in, RefCodec&) -> StatusOr<JobCommand> {
        return JobCommand{in.getOp(), in.getName(), in.getBody(), in.getCaller()};
      })));
  RETURN_IF_ERROR((r.Add<JobCommandReply, wire::JobCommandReply>(
      kJobCommandReply, "training.JobCommandReply",
      [](const JobCommandReply& m, wire::JobCommandReply::Builder b, RefCodec&) { b.setBody(m.body); },
      [](wire::JobCommandReply::Reader in, RefCodec&) -> StatusOr<JobCommandReply> {
        return JobCommandReply{in.getBody()};
      })));
  RETURN_IF_ERROR((r.Add<ReadWorkerLog, wire::ReadWorkerLog>(
      kReadWorkerLog, "training.ReadWorkerLog",
      [](const ReadWorkerLog& m, wire::ReadWorkerLog::Builder b, RefCodec&) {
        b.setJob(m.job);
        b.setAttempt(m.attempt);
        b.setRank(m.rank);
        b.setOffset(m.offset);
        b.setMaxBytes(m.max_bytes);
      },
      [](wire::ReadWorkerLog::Reader in, RefCodec&) -> StatusOr<ReadWorkerLog> {
        return ReadWorkerLog{in.getJob(), in.getAttempt(), in.getRank(), in.getOffset(), in.getMaxBytes()};
      })));
  return r.Add<WorkerLogChunk, wire::WorkerLogChunk>(
      kWorkerLogChunk, "training.WorkerLogChunk",
      [](const WorkerLogChunk& m, wire::WorkerLogChunk::Builder b, RefCodec&) {
        b.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(m.data.data()), m.data.size()));
        b.setNextOffset(m.next_offset);
        b.setSize(m.size);
        b.setRunning(m.running);
      },
      [](wire::WorkerLogChunk::Reader in, RefCodec&) -> StatusOr<WorkerLogChunk> {
        auto data = in.getData();
        return WorkerLogChunk{std::string(reinterpret_cast<const char*>(data.begin()), data.size()),
                              in.getNextOffset(), in.getSize(), in.getRunning()};
      });
}

}  // namespace troupe::training
