// Atomic file replacement (write a temporary file, fsync, rename, fsync the directory).
#include "common/file_util.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace troupe {

namespace {

Status Errno(const std::string& what, const std::string& path, int err) {
  return InternalError("cannot " + what + " " + path + ": " + std::strerror(err));
}

// The directory part of `path` ("." when it has none).
std::string DirectoryOf(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  if (path.empty() || path.back() == '/') return InvalidArgumentError("write file: '" + path + "' is not a file name");
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return Errno("create a temporary file for", path, errno);
  auto fail = [&](const std::string& what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return Errno(what, tmp, err);
  };
  // mkstemp makes 0600; a file other programs read gets the usual 0644.
  if (::fchmod(fd, 0644) != 0) return fail("set the mode of", errno);
  const char* p = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write", errno);
    if (n == 0) return fail("write", EIO);
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Errno("close", tmp, err);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Errno("rename " + tmp + " to", path, err);
  }
  // The rename itself is durable only once the directory is.
  const std::string dir = DirectoryOf(path);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno("open the directory", dir, errno);
  const int synced = ::fsync(dir_fd);
  const int err = errno;
  ::close(dir_fd);
  if (synced != 0) return Errno("fsync the directory", dir, err);
  return OkStatus();
}

}  // namespace troupe
