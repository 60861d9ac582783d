// The built-in example trainer ("example-linear", docs/jobs.md, "Actor workers"): linear
// regression on synthetic data, trained data-parallel by actor workers, exact to the bit whatever
// the world size and whatever failures and restarts happen on the way. Used by the actor worker
// tests and the recovery benchmark.
//
// Why it is exact: sample i of step s is made from (seed, s, i) alone (splitmix64), so a rank's
// share does not depend on the world size or on what ran before; each sample's gradient is
// rounded to fixed point (int64, 2^-24 units) and the gradients are summed as integers (the
// allreduce is an int64 sum, associative, so any grouping of samples over ranks gives the same
// sum); the update then runs the same double arithmetic on every rank. A run resumed from a
// checkpoint of step S continues from the same weights and the same data as one that never
// stopped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actors/training/actor_worker.h"
#include "common/status.h"

namespace troupe::training {

inline constexpr const char* kExampleLinearType = "example-linear";

/// The trainer's configuration, from entry.env (each NAME a decimal number; defaults below).
struct ExampleLinearConfig {
  uint64_t steps = 40;             ///< STEPS: training steps in all
  uint64_t checkpoint_every = 10;  ///< CHECKPOINT_EVERY: save every k steps (and after the last)
  uint64_t batch = 64;             ///< BATCH: samples per step over all ranks, at most kMaxBatch
  uint64_t dim = 8;                ///< DIM: features, at most kMaxDim
  uint64_t seed = 1;               ///< SEED: the data's and the true model's
  uint64_t step_ms = 0;            ///< STEP_MS: a pause after each step (a slower job to fail in)
  /// THROW_AT_STEP (0: never), THROW_RANK, THROW_ATTEMPT: that rank of that attempt throws a
  /// std::runtime_error at that step (the failure tests' injected exception).
  uint64_t throw_at_step = 0;
  uint64_t throw_rank = 0;
  uint64_t throw_attempt = 1;
  /// PROGRESS_DIR (a directory; empty: none): rank 0 writes `first-step-attempt-<A>` there, the
  /// Unix time in ms (system clock) when its attempt's first step completed (the recovery
  /// measurement: kill -9 to the next completed step).
  std::string progress_dir;

  static constexpr uint64_t kMaxBatch = 1 << 16;
  static constexpr uint64_t kMaxDim = 1 << 12;
};

/// Reads the configuration; InvalidArgument naming the variable for a bad number or bound.
StatusOr<ExampleLinearConfig> ReadExampleLinearConfig(const WorkerContext& context);

/// The weights (dim values, then the bias) as the shard file "weights.bin" holds them: the
/// doubles' bytes in the host's order (every node of a job runs the same build).
std::string EncodeWeights(const std::vector<double>& weights);
/// InvalidArgument when `bytes` is not `dim + 1` doubles.
StatusOr<std::vector<double>> DecodeWeights(const std::string& bytes, uint64_t dim);

/// The fixed-point gradient (dim + 1 int64, 2^-24 units) of samples [first, last) of `step`
/// at `weights`.
std::vector<int64_t> LinearGradient(const ExampleLinearConfig& config, uint64_t step, uint64_t first, uint64_t last,
                                    const std::vector<double>& weights);
/// Applies the summed gradient of a whole step's batch to `weights`.
void ApplyGradient(const ExampleLinearConfig& config, const std::vector<int64_t>& sum, std::vector<double>* weights);

/// The worker type's body: resumes from the checkpoint it is given (weights.bin), trains to
/// `steps` averaging the gradients over the ranks (int64 allreduce), saves every
/// `checkpoint_every` steps and after the last, and returns OK. Errors: a failed collective
/// (Unavailable when a peer is lost), a failed save, Cancelled when stopped.
Status ExampleLinearMain(WorkerContext& context);

}  // namespace troupe::training
