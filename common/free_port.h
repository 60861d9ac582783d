// Picking a TCP port that is free now, for a child process to listen on (a training job's
// MASTER_PORT, a serving backend's $PORT).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace troupe {

/// A TCP port free on `host` (an IPv4 address; anything else means every address) now: bound
/// and closed. Chosen at random in 20000-32767, below Linux's ephemeral range (32768-60999 by
/// default), so that no outgoing connection is given it before the child binds it (binding port 0
/// would pick one an outgoing connection can then take); another program binding it meanwhile is
/// still possible. Falls back to a port the kernel picks after 64 ports in use. Unavailable
/// (naming the host and errno's text) if no port can be bound.
StatusOr<uint16_t> PickFreePort(const std::string& host);

}  // namespace troupe
