// Errors at the CAF boundary: troupe Status <-> caf::error, in both directions.
#pragma once

#include <caf/error.hpp>
#include <caf/atom.hpp>

#include "common/status.h"

namespace troupe::runtime {

/// The CAF error category of troupe Status codes (the code is the StatusCode number).
inline constexpr caf::atom_value kStatusCategory = caf::atom("troupe");

/// A caf::error carrying `status` (category kStatusCategory, message as context).
caf::error ToCafError(const Status& status);

/// The Status for a CAF error: troupe errors keep their code and message; CAF's own
/// system errors map to the closest code (request_timeout -> DeadlineExceeded,
/// request_receiver_down -> Unavailable, unexpected_message -> InvalidArgument, ...).
Status ToStatus(const caf::error& error);

/// The human-readable text of an error, without needing an actor_system to render it.
std::string ErrorText(const caf::error& error);

}  // namespace troupe::runtime
