#include "ssm/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace ssm {

absl::StatusCode FileErrorCode(int error_number) {
  switch (error_number) {
    case ENOENT:
    case ENOTDIR:
      return absl::StatusCode::kNotFound;
    case EACCES:
    case EPERM:
      return absl::StatusCode::kPermissionDenied;
    case EISDIR:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::ErrnoToStatusCode(error_number);
  }
}

absl::Status FileError(int error_number, std::string_view action,
                       std::string_view path) {
  std::string message(path);
  message.append(": cannot ").append(action).append(": ");
  message.append(std::strerror(error_number));
  return absl::Status(FileErrorCode(error_number), message);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             const ReadFileOptions& options) {
  // O_NONBLOCK only keeps open() from waiting for a FIFO's writer; it has no
  // effect on regular files, and anything else is refused below.
  const int flags =
      O_RDONLY | O_CLOEXEC | (options.regular_file_only ? O_NONBLOCK : 0);
  int fd;
  do {
    fd = ::open(path.c_str(), flags);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return FileError(errno, "open", path);
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) return FileError(errno, "stat", path);
  // open() succeeds on a directory; read() would fail with EISDIR.
  if (S_ISDIR(st.st_mode)) return FileError(EISDIR, "read", path);
  const bool regular = S_ISREG(st.st_mode);
  if (!regular && options.regular_file_only) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": not a regular file (a FIFO, socket or device)"));
  }
  const auto too_large = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": larger than ", options.max_bytes, " bytes"));
  };
  if (regular && static_cast<uint64_t>(st.st_size) > options.max_bytes) {
    return too_large();
  }

  // Read at most one byte past the limit: enough to tell a file that is
  // exactly max_bytes long from a longer one (or one that grew).
  const size_t limit = options.max_bytes == std::numeric_limits<size_t>::max()
                           ? options.max_bytes
                           : options.max_bytes + 1;
  // The size is a hint: read to end of file in case it changed meanwhile.
  const size_t hint =
      regular ? static_cast<size_t>(st.st_size) + 1 : size_t{1} << 16;
  std::string bytes(std::min(hint, limit), '\0');
  size_t got = 0;
  while (got < limit) {
    if (got == bytes.size()) {
      bytes.resize(std::min(limit, std::max<size_t>(2 * bytes.size(), 4096)));
    }
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FileError(errno, "read", path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > options.max_bytes) return too_large();
  bytes.resize(got);
  return bytes;
}

}  // namespace ssm
