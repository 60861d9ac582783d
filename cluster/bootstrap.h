// Bootstrap: what the head, node agents and clients share to find one another (node ids, the
// head's address and name, the runtime each process starts, the protocol's codecs).
#pragma once

#include <string>

#include "cluster/config.h"
#include "common/status.h"
#include "runtime/codec.h"
#include "runtime/runtime.h"

namespace troupe::cluster {

/// The name the head's controller is registered under on the head node.
inline constexpr const char* kHeadActorName = "troupe.head";

/// Node ids: stable functions of the cluster and node names, so restarts keep identities.
runtime::NodeId HeadNodeId(const ClusterConfig& config);
runtime::NodeId NodeIdOf(const ClusterConfig& config, const std::string& node_name);

/// Where the head listens: `override_address` if given; else head.address:head.port; with
/// port 0, the address the running head wrote to <head.data_dir>/head.address.
StatusOr<std::string> ResolveHeadAddress(const ClusterConfig& config, const std::string& override_address);

/// A runtime configured from the cluster file for one process.
runtime::RuntimeConfig RuntimeConfigFor(const ClusterConfig& config, const std::string& name, runtime::NodeId id,
                                        const std::string& listen_address);
/// Every message type of the cluster protocol.
runtime::CodecRegistry ClusterCodecs();

}  // namespace troupe::cluster
