// Files that other programs read (Prometheus' file-service-discovery list, head.address),
// replaced so that a reader sees the old contents or the new, never an empty or half-written file.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace troupe {

/// Replaces `path` with `contents` atomically: writes a temporary file beside it (same
/// directory, so the rename cannot cross file systems), checks every write, fsyncs the file,
/// renames it over `path` and fsyncs the directory. On any failure `path` keeps its old
/// contents (or stays absent), the temporary file is removed, and the error names the file,
/// the step that failed and errno's text (e.g. "No space left on device").
Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace troupe
