// `troupe serve ...`: serving deployments (docs/serving.md, "Deployments").
#pragma once

#include <string>

#include "cli/cluster_commands.h"

namespace troupe::cli {

/// `troupe serve ACTION [TARGET] [N]`'s flags.
struct ServeOptions {
  ClusterOptions cluster;
  std::string action;  ///< deploy, update, rollback, list, show, events, scale, delete, request
  std::string target;  ///< the spec file (deploy, update) or the deployment's name
  int replicas = -1;   ///< scale N
  bool wait = false;   ///< deploy/update/rollback --wait: until every desired replica is ready (state running)
  int wait_seconds = 120;  ///< deploy --wait's bound
  std::string body;    ///< request --body JSON
  std::string path = "/v1/chat/completions";  ///< request --path
  int timeout_seconds = 60;  ///< request --timeout
};

/// Runs `troupe serve ACTION`; returns the exit status (0: done; deploy --wait: 0 once every
/// desired replica is ready, 1 if the bound passed first).
int RunServe(ServeOptions args);

}  // namespace troupe::cli
