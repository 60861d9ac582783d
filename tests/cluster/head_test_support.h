// What the head's registry tests share: a real LMDB file in a temporary directory, the head's
// tables in it, and a cluster config, with no actor system.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "cluster/config.h"
#include "cluster/head_store.h"
#include "cluster/membership.h"
#include "cluster/messages.h"
#include "storage/lmdb_env.h"
#include "storage/table.h"

namespace troupe::cluster::testing {

/// A new empty directory under the system's temporary directory, removed with what it holds.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-head-XXXXXX").string();
    if (mkdtemp(templ.data()) != nullptr) path_ = templ;
    EXPECT_FALSE(path_.empty()) << "cannot make a directory in " << std::filesystem::temp_directory_path();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// A temporary directory with the head's LMDB environment and tables; Reopen() is a head restart.
class HeadStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(temp_.path().empty());
    dir_ = temp_.path();
    config_.name = "test";
    config_.head.data_dir = dir_;
    config_.failure_timeout = std::chrono::milliseconds(1000);
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    env_.reset();
  }
  void Reopen() {
    store_.reset();
    env_.reset();
    storage::LmdbOptions options;
    options.path = dir_;
    options.map_size = 64u << 20;
    auto env = storage::LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
    store_ = std::make_unique<HeadStore>(env_.get());
    auto nodes = storage::Table<std::string, NodeRecord>::Open(*env_, "nodes");
    auto leases = storage::Table<uint64_t, std::string>::Open(*env_, "leases");
    ASSERT_TRUE(nodes.ok() && leases.ok());
    node_table_ = std::make_unique<storage::Table<std::string, NodeRecord>>(*nodes);
    lease_table_ = std::make_unique<storage::Table<uint64_t, std::string>>(*leases);
  }
  /// How many rows the table holds.
  template <class K, class V>
  size_t Rows(const storage::Table<K, V>& table) {
    auto txn = env_->BeginRead();
    EXPECT_TRUE(txn.ok());
    size_t n = 0;
    EXPECT_TRUE(table.ForEach(*txn, [&](const K&, const V&) { return ++n > 0; }).ok());
    return n;
  }
  /// A node with one simulated 80 GiB GPU in 10 GiB slices (8 slices).
  static NodeRecord Node(const std::string& name) {
    NodeRecord r;
    r.name = name;
    r.node_id = std::hash<std::string>{}(name);
    r.cpus = 8;
    r.memory_bytes = 64ull << 30;
    r.gpus.push_back(GpuInfo{"sim-0", 80ull << 30, true, "", 0});
    r.slice_memory_bytes = 10ull << 30;
    r.metrics_address = "127.0.0.1:9" + std::to_string(name.size());
    return r;
  }

  TempDir temp_;
  std::string dir_;
  ClusterConfig config_;
  std::unique_ptr<storage::LmdbEnv> env_;
  std::unique_ptr<HeadStore> store_;
  std::unique_ptr<storage::Table<std::string, NodeRecord>> node_table_;
  std::unique_ptr<storage::Table<uint64_t, std::string>> lease_table_;
};

}  // namespace troupe::cluster::testing
