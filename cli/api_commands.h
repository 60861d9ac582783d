// `troupe key|tenant|usage ...`: the API gateway's keys, tenants and metered usage, through the
// head's api actor (docs/gateway.md, "Keys, tenants and usage from the command line").
#pragma once

#include <cstdint>
#include <string>

#include "cli/cluster_commands.h"

namespace troupe::cli {

/// The flags of `troupe key ACTION`, `troupe tenant ACTION` and `troupe usage`.
struct ApiOptions {
  ClusterOptions cluster;
  std::string action;       ///< key: create, list, revoke; tenant: create, list; usage: "usage"
  std::string target;       ///< key revoke ID; tenant create NAME
  std::string tenant;       ///< --tenant
  std::string role;         ///< --role user|operator|admin (key create; default user)
  std::string expires_in;   ///< --expires-in D ("90d", "12h"; default never)
  std::string deployments;  ///< --deployments a,b (key create; default all of the tenant's)
  std::string key;          ///< --key ID (usage)
  std::string model;        ///< --model M (usage)
  std::string since;        ///< --since D (usage: the last D, "24h", "7d")
  /// --rpm, --tpm, --max-concurrent (key create, tenant create; 0: unlimited).
  uint64_t rpm = 0, tpm = 0;
  uint32_t max_concurrent = 0;
};

/// Each returns the exit status (0: done; 1: the head refused or could not be reached).
int RunKey(ApiOptions args);
int RunTenant(ApiOptions args);
int RunUsage(ApiOptions args);

}  // namespace troupe::cli
