// The checkpoint committer.
#include "actors/training/checkpoint_committer.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

namespace troupe::training {

StatusOr<std::optional<storage::CheckpointRecord>> NewestIntact(storage::CheckpointStore& store, const std::string& job,
                                                                std::vector<std::string>* fallbacks) {
  return store.NewestIntact(job, fallbacks);
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
