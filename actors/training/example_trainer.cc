// The example trainer (example_trainer.h).
#include "actors/training/example_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "actors/training/worker_communicators.h"
#include "common/file_util.h"

namespace troupe::training {

namespace {

// Gradients in fixed point: 2^-24 units, each sample's clamped to +-2^20 (so a batch of
// kMaxBatch = 2^16 samples sums to at most 2^60: no int64 overflow).
constexpr double kScale = 16777216.0;  // 2^24
constexpr double kMaxSampleGradient = 1048576.0;  // 2^20
constexpr double kLearningRate = 0.05;

// splitmix64 (Steele, Lea, Flood 2014): a counter-based generator, so sample (step, i) needs no
// state from the samples before it.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1), from the top 53 bits.
double Uniform(uint64_t bits) { return static_cast<double>(bits >> 11) * (2.0 / 9007199254740992.0) - 1.0; }

double TrueWeight(uint64_t seed, uint64_t j) { return 2.0 * Uniform(Mix(Mix(seed ^ 0x5EEDull) + j)); }

}  // namespace

StatusOr<ExampleLinearConfig> ReadExampleLinearConfig(const WorkerContext& context) {
  ExampleLinearConfig c;
  ASSIGN_OR_RETURN(c.steps, context.ConfigNumber("STEPS", c.steps));
  ASSIGN_OR_RETURN(c.checkpoint_every, context.ConfigNumber("CHECKPOINT_EVERY", c.checkpoint_every));
  ASSIGN_OR_RETURN(c.batch, context.ConfigNumber("BATCH", c.batch));
  ASSIGN_OR_RETURN(c.dim, context.ConfigNumber("DIM", c.dim));
  ASSIGN_OR_RETURN(c.seed, context.ConfigNumber("SEED", c.seed));
  ASSIGN_OR_RETURN(c.step_ms, context.ConfigNumber("STEP_MS", c.step_ms));
  ASSIGN_OR_RETURN(c.throw_at_step, context.ConfigNumber("THROW_AT_STEP", c.throw_at_step));
  ASSIGN_OR_RETURN(c.throw_rank, context.ConfigNumber("THROW_RANK", c.throw_rank));
  ASSIGN_OR_RETURN(c.throw_attempt, context.ConfigNumber("THROW_ATTEMPT", c.throw_attempt));
  if (auto it = context.config().find("PROGRESS_DIR"); it != context.config().end()) c.progress_dir = it->second;
  if (c.checkpoint_every == 0) return InvalidArgumentError("entry.env.CHECKPOINT_EVERY must be at least 1");
  if (c.batch < context.world_size() || c.batch > ExampleLinearConfig::kMaxBatch) {
    return InvalidArgumentError("entry.env.BATCH is " + std::to_string(c.batch) + ": must be between the " +
                                std::to_string(context.world_size()) + " workers and " +
                                std::to_string(ExampleLinearConfig::kMaxBatch));
  }
  if (c.dim == 0 || c.dim > ExampleLinearConfig::kMaxDim) {
    return InvalidArgumentError("entry.env.DIM is " + std::to_string(c.dim) + ": must be between 1 and " +
                                std::to_string(ExampleLinearConfig::kMaxDim));
  }
  if (c.step_ms > 60000) return InvalidArgumentError("entry.env.STEP_MS must be at most 60000");
  return c;
}

std::string EncodeWeights(const std::vector<double>& weights) {
  std::string out(weights.size() * sizeof(double), '\0');
  if (!weights.empty()) std::memcpy(out.data(), weights.data(), out.size());
  return out;
}

StatusOr<std::vector<double>> DecodeWeights(const std::string& bytes, uint64_t dim) {
  if (bytes.size() != (dim + 1) * sizeof(double)) {
    return InvalidArgumentError("weights.bin has " + std::to_string(bytes.size()) + " bytes; DIM " +
                                std::to_string(dim) + " needs " + std::to_string((dim + 1) * sizeof(double)) +
                                " (was the checkpoint saved with another DIM?)");
  }
  std::vector<double> w(dim + 1);
  std::memcpy(w.data(), bytes.data(), bytes.size());
  return w;
}

std::vector<int64_t> LinearGradient(const ExampleLinearConfig& config, uint64_t step, uint64_t first, uint64_t last,
                                    const std::vector<double>& weights) {
  const uint64_t dim = config.dim;
  std::vector<int64_t> grad(dim + 1, 0);
  std::vector<double> x(dim);
  const uint64_t step_key = Mix(Mix(config.seed) ^ step);
  for (uint64_t i = first; i < last; ++i) {
    const uint64_t key = Mix(step_key ^ (i * 0xD6E8FEB86659FD93ull));
    double y = TrueWeight(config.seed, dim);  // the true bias
    double prediction = weights[dim];
    for (uint64_t j = 0; j < dim; ++j) {
      x[j] = Uniform(Mix(key + j));
      y += TrueWeight(config.seed, j) * x[j];
      prediction += weights[j] * x[j];
    }
    y += 0.01 * Uniform(Mix(key + dim));  // noise
    const double err = prediction - y;
    auto fixed = [](double g) {
      return static_cast<int64_t>(std::llround(std::clamp(g, -kMaxSampleGradient, kMaxSampleGradient) * kScale));
    };
    for (uint64_t j = 0; j < dim; ++j) grad[j] += fixed(2.0 * err * x[j]);
    grad[dim] += fixed(2.0 * err);
  }
  return grad;
}

void ApplyGradient(const ExampleLinearConfig& config, const std::vector<int64_t>& sum, std::vector<double>* weights) {
  const double batch = static_cast<double>(config.batch);
  for (size_t j = 0; j < weights->size(); ++j) {
    (*weights)[j] -= kLearningRate * (static_cast<double>(sum[j]) / kScale) / batch;
  }
}

Status ExampleLinearMain(WorkerContext& context) {
  ASSIGN_OR_RETURN(const ExampleLinearConfig config, ReadExampleLinearConfig(context));
  const uint32_t rank = context.rank();
  const uint32_t world = context.world_size();
  std::vector<double> weights(config.dim + 1, 0.0);
  uint64_t step = 0;
  if (auto resume = context.checkpoints().resume_step()) {
    ASSIGN_OR_RETURN(const std::string bytes, context.checkpoints().Read("weights.bin"));
    ASSIGN_OR_RETURN(weights, DecodeWeights(bytes, config.dim));
    step = *resume;
    context.Log("example-linear: resumed at step " + std::to_string(step) + " of " + std::to_string(config.steps));
  }
  // This rank's samples of each step's batch.
  const uint64_t first = config.batch * rank / world;
  const uint64_t last = config.batch * (rank + 1) / world;
  bool first_step_noted = false;
  while (step < config.steps) {
    if (context.stopping()) return CancelledError("rank " + std::to_string(rank) + " stopped at step " + std::to_string(step));
    ++step;
    if (config.throw_at_step == step && config.throw_rank == rank && config.throw_attempt == context.attempt()) {
      throw std::runtime_error("injected failure at step " + std::to_string(step) + " (THROW_AT_STEP)");
    }
    std::vector<int64_t> grad = LinearGradient(config, step, first, last, weights);
    if (world > 1) {
      // Host gradients: over NCCL through a buffer of the slice (worker_communicators.h).
      Status reduced = AllReduceHostBuffer(context, grad.data(), grad.size(), collectives::DataType::kInt64,
                                           collectives::ReduceOp::kSum);
      if (!reduced.ok()) {
        return Status(reduced.code(), "rank " + std::to_string(rank) + ", step " + std::to_string(step) +
                                          ": allreduce of the gradients: " + reduced.message());
      }
    }
    ApplyGradient(config, grad, &weights);
    context.StepDone(step);
    if (!first_step_noted && rank == 0 && !config.progress_dir.empty()) {
      first_step_noted = true;
      const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch());
      RETURN_IF_ERROR(WriteFileAtomically(
          config.progress_dir + "/first-step-attempt-" + std::to_string(context.attempt()), std::to_string(now.count())));
    }
    if (step % config.checkpoint_every == 0 || step == config.steps) {
      RETURN_IF_ERROR(context.checkpoints().Save(step, {{"weights.bin", EncodeWeights(weights)}}));
      context.Log("example-linear: step " + std::to_string(step) + " of " + std::to_string(config.steps) +
                  ": checkpoint saved");
    }
    if (config.step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(config.step_ms));
  }
  return OkStatus();
}

}  // namespace troupe::training
