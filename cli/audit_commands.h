// `troupe audit`: the head's audit log of admin actions (docs/gateway.md, "Audit log").
#pragma once

#include <string>

#include "cli/cluster_commands.h"

namespace troupe::cli {

/// The flags of `troupe audit`.
struct AuditOptions {
  ClusterOptions cluster;
  std::string since;    ///< --since D: the last D ("24h", "7d") or from a UTC date ("2026-11-30")
  bool verify = false;  ///< --verify: check the whole chain
};

/// Lists the records (seq, time, who, action, target, result), or one line of JSON with --json;
/// with --verify checks the chain and says "chain verified: N records" or what is wrong where.
/// Returns 0, or 1 if the head could not be asked or the chain does not verify.
int RunAudit(AuditOptions args);

}  // namespace troupe::cli
