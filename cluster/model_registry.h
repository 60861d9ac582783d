// ModelRegistry: the model repository on the head. A training job with an output model registers
// its final committed checkpoint as that model's next version; serving deploys from these.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/head_store.h"
#include "common/clock.h"
#include "common/status.h"
#include "storage/checkpoint_store.h"

namespace troupe::cluster {

/// One version of a model: the files of a committed checkpoint, copied (hard-linked where the
/// file system allows) out of the job's checkpoints, so that deleting the job keeps the model.
struct ModelVersion {
  std::string model;
  uint64_t version = 0;   ///< from 1, one more than the newest
  std::string job;        ///< the job that produced it
  uint64_t step = 0;      ///< the checkpoint's training step
  uint32_t world_size = 0;
  uint64_t total_bytes = 0;
  std::string manifest_sha256;
  std::string dir;        ///< `<head.data_dir>/models/<model>/v<version>` (rank-<r>/..., manifest.json)
  int64_t unix_ms = 0;    ///< when it was registered
};

std::string ModelVersionToJson(const ModelVersion& v);
StatusOr<ModelVersion> ModelVersionFromJson(const std::string& json);

/// The model repository: LMDB table `models` (key "<model>/<version, 10 digits>", value the
/// version as JSON) and the files under `<head.data_dir>/models`. Used on the head controller's
/// mailbox, like the other registries.
class ModelRegistry {
 public:
  ModelRegistry(HeadStore* store, std::string models_dir, const Clock* clock);
  Status Open();
  /// Registers `checkpoint` as the next version of `model`: copies its directory (hard links
  /// where it can), then stores the record; only then does the version exist. InvalidArgument for
  /// a bad model name; I/O errors name the path.
  StatusOr<ModelVersion> Register(const std::string& model, const storage::CheckpointRecord& checkpoint);
  /// Every version of every model (model order, then version), or of `model` only.
  StatusOr<std::vector<ModelVersion>> List(const std::string& model = "") const;

 private:
  HeadStore* store_;
  const std::string models_dir_;
  const Clock* clock_;
  storage::TableId table_;
};

}  // namespace troupe::cluster
