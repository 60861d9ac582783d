// The checkpoint committer.
#include "actors/training/checkpoint_committer.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

namespace troupe::training {

namespace {

// Why `path` is not a regular file of `size` bytes; empty when it is.
std::string NotIntact(const std::string& path, std::optional<uint64_t> size) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return path + " is missing";
  if (!S_ISREG(st.st_mode)) return path + " is not a regular file";
  if (size && static_cast<uint64_t>(st.st_size) != *size) {
    return path + " has " + std::to_string(st.st_size) + " bytes, the manifest says " + std::to_string(*size);
  }
  return "";
}

}  // namespace

StatusOr<std::optional<storage::CheckpointRecord>> NewestIntact(storage::CheckpointStore& store, const std::string& job,
                                                                std::vector<std::string>* fallbacks) {
  ASSIGN_OR_RETURN(auto records, store.List(job));
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    std::string wrong = NotIntact(it->dir + "/manifest.json", std::nullopt);
    for (size_t r = 0; r < it->rank_files.size() && wrong.empty(); ++r) {
      for (const storage::CheckpointFile& file : it->rank_files[r]) {
        wrong = NotIntact(it->dir + "/rank-" + std::to_string(r) + "/" + file.path, file.size);
        if (!wrong.empty()) break;
      }
    }
    if (wrong.empty()) return std::optional<storage::CheckpointRecord>(std::move(*it));
    if (fallbacks != nullptr) {
      fallbacks->push_back("Skipped checkpoint step " + std::to_string(it->step) + " of job '" + job + "': " + wrong +
                           ".");
    }
  }
  return std::optional<storage::CheckpointRecord>();
}

namespace {

caf::behavior Committer(caf::event_based_actor* self, CheckpointCommitterInit init) {
  self->monitor(init.supervisor);
  // The down message queues behind the requests sent before it: they are answered, then it ends.
  self->set_down_handler([self](caf::down_msg&) { self->quit(); });
  return {
      [init](CommitSteps& request) {
        CommitPassDone done;
        done.attempt = request.attempt;
        auto steps = init.store->CompleteSteps(init.job, init.root, request.attempt, init.world_size);
        if (!steps.ok()) {
          done.lookup = steps.status();
          return done;
        }
        for (uint64_t step : *steps) {
          auto record = init.store->Commit(init.job, init.root, request.attempt, step, init.world_size);
          StepCommit& outcome = done.steps.emplace_back();
          outcome.step = step;
          if (!record.ok()) {
            outcome.status = record.status();
            continue;
          }
          outcome.total_bytes = record->total_bytes;
          Status kept = init.store->Retain(init.job, init.root, init.keep, request.attempt);
          if (!kept.ok()) spdlog::warn("job '{}': retention: {}", init.job, kept.ToString());
        }
        return done;
      },
      [init](FindResume& request) {
        ResumePoint point;
        point.attempt = request.attempt;
        auto newest = NewestIntact(*init.store, init.job, &point.fallbacks);
        if (newest.ok()) {
          point.record = std::move(*newest);
        } else {
          point.status = newest.status();
        }
        return point;
      },
  };
}

}  // namespace

caf::actor SpawnCheckpointCommitter(caf::actor_system& system, CheckpointCommitterInit init) {
  return system.spawn<caf::detached>(Committer, std::move(init));
}

}  // namespace troupe::training
