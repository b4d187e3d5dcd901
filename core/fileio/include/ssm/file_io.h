// Reading whole files, with the operating system's error mapped to the
// canonical code a caller can act on. The one file reader of the project:
// the core's weight files, the server's model configs and the client's
// inputs all read through it. CMake target ssm_fileio (Abseil only), so the
// client can use it without the core's numerics.
//
// Errors name the path and carry strerror's text,
//   "<path>: cannot open: No such file or directory",
// with the code FileErrorCode gives. Thread safety: no shared state.

#ifndef SSM_FILE_IO_H_
#define SSM_FILE_IO_H_

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ssm {

// The canonical code for an errno from open, stat or read:
//   ENOENT, ENOTDIR   NOT_FOUND (nothing at that path; ENOTDIR: a folder on
//                     the way is a file, so nothing can be below it)
//   EACCES, EPERM     PERMISSION_DENIED
//   EISDIR            FAILED_PRECONDITION (something is there, but it is
//                     not a file: the state of the file system, not the
//                     spelling of the path, is what is wrong)
//   anything else     absl::ErrnoToStatusCode, Abseil's canonical table,
//                     which the project's writers use too (so a read and a
//                     write failing for one reason give one code), and which
//                     keeps what callers can act on: EMFILE, ENFILE, ENOMEM
//                     RESOURCE_EXHAUSTED; EINTR, EAGAIN UNAVAILABLE (worth a
//                     retry); ENAMETOOLONG INVALID_ARGUMENT; EIO, ELOOP
//                     UNKNOWN.
absl::StatusCode FileErrorCode(int error_number);

// "<path>: cannot <action>: <strerror>" with FileErrorCode's code.
absl::Status FileError(int error_number, std::string_view action,
                       std::string_view path);

struct ReadFileOptions {
  // A longer file is refused with INVALID_ARGUMENT naming the path and the
  // limit, after reading at most max_bytes + 1 bytes of it.
  size_t max_bytes = std::numeric_limits<size_t>::max();
  // true: only regular files (after following symlinks); anything else is
  // FAILED_PRECONDITION, and a FIFO is refused without waiting for a writer.
  // false: pipes, FIFOs and character devices are read to end of file too
  // (a FIFO's open then waits for its writer, as cat's does). A directory
  // is FAILED_PRECONDITION either way.
  bool regular_file_only = true;
};

// The whole file at `path`. Reads to end of file, so a file that grows
// while it is read is read as it was at the end.
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             const ReadFileOptions& options = {});

}  // namespace ssm

#endif  // SSM_FILE_IO_H_
