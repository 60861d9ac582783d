// Bootstrap.
#include "cluster/bootstrap.h"

#include <spdlog/spdlog.h>

#include <fstream>

#include "actors/api/messages.h"
#include "actors/serving/messages.h"
#include "actors/training/messages.h"
#include "cluster/admission.h"
#include "cluster/messages.h"
#include "runtime/node_identity.h"

namespace troupe::cluster {

runtime::NodeId HeadNodeId(const ClusterConfig& config) { return runtime::NodeIdFromName("troupe-head/" + config.name); }
runtime::NodeId NodeIdOf(const ClusterConfig& config, const std::string& node_name) {
  return runtime::NodeIdFromName("troupe-node/" + config.name + "/" + node_name);
}

StatusOr<std::string> ResolveHeadAddress(const ClusterConfig& config, const std::string& override_address) {
  if (!override_address.empty()) return override_address;
  if (config.head.port != 0) return config.head.address + ":" + std::to_string(config.head.port);
  std::string file = config.head.data_dir + "/head.address";
  std::ifstream in(file);
  std::string address;
  if (!in || !std::getline(in, address) || address.empty()) {
    return UnavailableError("head.port is 0 and " + file + " does not say where the head listens (is it running?)");
  }
  return address;
}

runtime::RuntimeConfig RuntimeConfigFor(const ClusterConfig& config, const std::string& name, runtime::NodeId id,
                                        const std::string& listen_address) {
  runtime::RuntimeConfig rc;
  rc.node_name = name;
  rc.node_id = id;
  rc.transport.cluster_token = config.token;
  rc.transport.listen_address = listen_address;
  rc.heartbeat_interval = config.heartbeat_interval;
  rc.heartbeat_timeout = config.failure_timeout;
  return rc;
}

runtime::CodecRegistry ClusterCodecs() {
  runtime::CodecRegistry codecs;
  Status s = AddClusterCodecs(codecs);
  if (s.ok()) s = training::AddTrainingCodecs(codecs);
  if (s.ok()) s = serving::AddServingCodecs(codecs);
  if (s.ok()) s = api::AddApiCodecs(codecs);
  if (s.ok()) s = AddAdmissionCodecs(codecs);
  if (!s.ok()) spdlog::critical("cluster codecs: {}", s.ToString());
  return codecs;
}

}  // namespace troupe::cluster
