// ModelRegistry.
#include "cluster/model_registry.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

namespace troupe::cluster {

namespace fs = std::filesystem;

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ModelVersion, model, version, job, step, world_size, total_bytes,
                                                manifest_sha256, dir, unix_ms)

std::string ModelVersionToJson(const ModelVersion& v) { return nlohmann::json(v).dump(); }

StatusOr<ModelVersion> ModelVersionFromJson(const std::string& json) {
  try {
    return nlohmann::json::parse(json).get<ModelVersion>();
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("not a model version: ") + e.what());
  }
}

namespace {

std::string Key(const std::string& model, uint64_t version) {
  char digits[16];
  std::snprintf(digits, sizeof digits, "%010llu", static_cast<unsigned long long>(version));
  return model + "/" + digits;
}

// `from` into `to` (which must not exist): hard links where the file system allows, else copies.
Status CopyTree(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::create_directories(to, ec);
  if (ec) return InternalError("cannot make " + to + ": " + ec.message());
  for (auto it = fs::recursive_directory_iterator(from, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const fs::path target = fs::path(to) / fs::relative(it->path(), from);
    if (it->is_directory()) {
      fs::create_directories(target, ec);
    } else if (it->is_regular_file()) {
      fs::create_hard_link(it->path(), target, ec);
      if (ec) {
        ec.clear();
        fs::copy_file(it->path(), target, ec);
      }
    }
    if (ec) return InternalError("cannot copy " + it->path().string() + " to " + target.string() + ": " + ec.message());
  }
  if (ec) return InternalError("cannot read " + from + ": " + ec.message());
  return OkStatus();
}

}  // namespace

ModelRegistry::ModelRegistry(HeadStore* store, std::string models_dir, const Clock* clock)
    : store_(store), models_dir_(std::move(models_dir)), clock_(clock) {}

Status ModelRegistry::Open() {
  ASSIGN_OR_RETURN(table_, store_->env().OpenTable("models"));
  return OkStatus();
}

StatusOr<std::vector<ModelVersion>> ModelRegistry::List(const std::string& model) const {
  std::vector<ModelVersion> out;
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  const std::string prefix = model.empty() ? "" : model + "/";
  Status bad = OkStatus();
  RETURN_IF_ERROR(txn.ForEach(table_, prefix, [&](std::string_view key, std::string_view value) {
    if (key.substr(0, prefix.size()) != prefix) return false;
    auto v = ModelVersionFromJson(std::string(value));
    if (!v.ok()) {
      bad = v.status();
      return false;
    }
    out.push_back(std::move(*v));
    return true;
  }));
  RETURN_IF_ERROR(bad);
  return out;
}

StatusOr<ModelVersion> ModelRegistry::Register(const std::string& model, const storage::CheckpointRecord& checkpoint) {
  RETURN_IF_ERROR(storage::ValidateCheckpointJobName(model));
  ASSIGN_OR_RETURN(auto versions, List(model));
  ModelVersion v;
  v.model = model;
  v.version = versions.empty() ? 1 : versions.back().version + 1;
  v.job = checkpoint.job;
  v.step = checkpoint.step;
  v.world_size = checkpoint.world_size;
  v.total_bytes = checkpoint.total_bytes;
  v.manifest_sha256 = checkpoint.manifest_sha256;
  v.dir = models_dir_ + "/" + model + "/v" + std::to_string(v.version);
  v.unix_ms = clock_->UnixMs();
  std::error_code ec;
  fs::remove_all(v.dir, ec);  // a copy an earlier head left without its record
  RETURN_IF_ERROR(CopyTree(checkpoint.dir, v.dir));
  RETURN_IF_ERROR(store_->Write([&](storage::Txn& txn) { return txn.Put(table_, Key(model, v.version), ModelVersionToJson(v)); }));
  return v;
}

}  // namespace troupe::cluster
