// ssm/file_io.h against real files: each error code from the file system
// itself (a missing path, an unreadable file, a directory, a FIFO, a path
// too long, a symlink loop), the size limit, and reading files and pipes
// byte for byte.
#include "ssm/file_io.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ssm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A fresh directory under the test temp dir, removed with its files.
class FileIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = absl::StrCat(::testing::TempDir(), "file_io_test.XXXXXX");
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code error;  // a mode-000 file is removable: the folder is ours
    std::filesystem::remove_all(dir_, error);
  }
  std::string Path(const std::string& name) const { return absl::StrCat(dir_, "/", name); }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    out << bytes;
    EXPECT_TRUE(out.flush()) << path;
    return path;
  }

  std::string dir_;
};

// Bytes that a text-mode or NUL-terminated reader would mangle, longer than
// the reader's first buffer for a pipe (64 KiB).
std::string AwkwardBytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

TEST(FileErrorCodeTest, MapsErrnoToTheCanonicalCode) {
  EXPECT_EQ(FileErrorCode(ENOENT), absl::StatusCode::kNotFound);
  EXPECT_EQ(FileErrorCode(ENOTDIR), absl::StatusCode::kNotFound);
  EXPECT_EQ(FileErrorCode(EACCES), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(FileErrorCode(EPERM), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(FileErrorCode(EISDIR), absl::StatusCode::kFailedPrecondition);
  // The rest: Abseil's table.
  EXPECT_EQ(FileErrorCode(EMFILE), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FileErrorCode(ENOMEM), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FileErrorCode(EINTR), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FileErrorCode(ENAMETOOLONG), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileErrorCode(EIO), absl::StatusCode::kUnknown);
}

TEST(FileErrorCodeTest, MessageNamesPathActionAndReason) {
  const absl::Status s = FileError(EACCES, "open", "/x/y.bin");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "/x/y.bin: cannot open: Permission denied");
}

TEST_F(FileIoTest, ReadsAFileByteForByte) {
  const std::string bytes = AwkwardBytes(200001);
  const std::string path = Write("data.bin", bytes);
  absl::StatusOr<std::string> got = ReadFileToString(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);
}

TEST_F(FileIoTest, ReadsAnEmptyFile) {
  absl::StatusOr<std::string> got = ReadFileToString(Write("empty", ""));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "");
}

TEST_F(FileIoTest, MissingFileIsNotFound) {
  const std::string path = Path("absent.bin");
  const absl::Status s = ReadFileToString(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_EQ(s.message(), absl::StrCat(path, ": cannot open: No such file or directory"));
}

TEST_F(FileIoTest, PathBelowAFileIsNotFound) {
  const std::string path = Write("plain", "x") + "/config.pbtxt";
  const absl::Status s = ReadFileToString(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), AllOf(StartsWith(path), HasSubstr("Not a directory")));
}

// Runs `body` in a child process under the unprivileged uid/gid 65534 and
// returns what it wrote to `out`; nullopt if the process could not drop
// its privileges (no CAP_SETUID, e.g. in a restricted container).
template <typename Body>
std::optional<std::string> RunAsNobody(Body body) {
  int fds[2];
  if (::pipe(fds) != 0) return std::nullopt;
  const pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    ::close(fds[0]);
    int rc = 2;
    if (::setgroups(0, nullptr) == 0 && ::setgid(65534) == 0 && ::setuid(65534) == 0) {
      const std::string out = body();
      rc = ::write(fds[1], out.data(), out.size()) == static_cast<ssize_t>(out.size()) ? 0 : 3;
    }
    ::_exit(rc);
  }
  ::close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return out;
}

TEST_F(FileIoTest, UnreadableFileIsPermissionDenied) {
  const std::string readable = Write("readable", "ok");
  const std::string path = Write("secret", "x");
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  const int probe = ::open(path.c_str(), O_RDONLY);
  if (probe < 0) {
    // An ordinary user: chmod 000 denies us.
    const absl::Status s = ReadFileToString(path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_EQ(s.message(), absl::StrCat(path, ": cannot open: Permission denied"));
    return;
  }
  ::close(probe);
  // Root (CAP_DAC_OVERRIDE) reads a mode-000 file: ask an unprivileged
  // child instead. It must read the readable file next to it, so the
  // denial comes from the file's mode, not from the folder.
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(readable.c_str(), 0644), 0);
  const std::optional<std::string> child = RunAsNobody([&] {
    absl::StatusOr<std::string> ok = ReadFileToString(readable);
    const absl::Status denied = ReadFileToString(path).status();
    return absl::StrCat(ok.ok() ? *ok : ok.status().ToString(), "|", denied.ToString());
  });
  if (!child.has_value()) {
    GTEST_SKIP() << "running with CAP_DAC_OVERRIDE (root), where chmod 000 does not deny, "
                    "and unable to drop to uid 65534 to test as an unprivileged user";
  }
  EXPECT_EQ(*child,
            absl::StrCat("ok|PERMISSION_DENIED: ", path, ": cannot open: Permission denied"));
}

TEST_F(FileIoTest, DirectoryIsFailedPrecondition) {
  for (const bool regular_only : {true, false}) {
    ReadFileOptions options;
    options.regular_file_only = regular_only;
    const absl::Status s = ReadFileToString(dir_, options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_EQ(s.message(), absl::StrCat(dir_, ": cannot read: Is a directory"));
  }
}

TEST_F(FileIoTest, TooLongAPathIsInvalidArgument) {
  const std::string path = Path(std::string(5000, 'a'));
  const absl::Status s = ReadFileToString(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("File name too long"));
}

TEST_F(FileIoTest, SymlinkLoopIsUnknownNamingTheCause) {
  const std::string path = Path("loop");
  ASSERT_EQ(::symlink(path.c_str(), path.c_str()), 0);
  const absl::Status s = ReadFileToString(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_THAT(std::string(s.message()),
              AllOf(StartsWith(path), HasSubstr("Too many levels of symbolic links")));
}

TEST_F(FileIoTest, SymlinkToAFileIsRead) {
  const std::string target = Write("target", "abc");
  const std::string link = Path("link");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  absl::StatusOr<std::string> got = ReadFileToString(link);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "abc");
}

TEST_F(FileIoTest, SizeLimitIsInclusive) {
  const std::string path = Write("four", "abcd");
  ReadFileOptions options;
  options.max_bytes = 4;
  absl::StatusOr<std::string> got = ReadFileToString(path, options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "abcd");
  options.max_bytes = 3;
  const absl::Status s = ReadFileToString(path, options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), absl::StrCat(path, ": larger than 3 bytes"));
}

// A pipe's end as a path (what `--input=<(generate)` gives a program).
class PipePath {
 public:
  explicit PipePath(const std::string& bytes) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    read_fd_ = fds[0];
    writer_ = std::thread([fd = fds[1], bytes] {
      size_t done = 0;
      while (done < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n <= 0) break;  // the reader stopped reading (EPIPE)
        done += static_cast<size_t>(n);
      }
      ::close(fd);
    });
  }
  ~PipePath() {
    ::close(read_fd_);  // a writer blocked on a full pipe gets EPIPE
    writer_.join();
  }
  std::string path() const { return absl::StrCat("/dev/fd/", read_fd_); }

 private:
  int read_fd_ = -1;
  std::thread writer_;
};

TEST_F(FileIoTest, PipeIsReadToEndWhenAllowed) {
  std::signal(SIGPIPE, SIG_IGN);
  const std::string bytes = AwkwardBytes(300007);  // several pipe buffers
  PipePath pipe(bytes);
  ReadFileOptions options;
  options.regular_file_only = false;
  absl::StatusOr<std::string> got = ReadFileToString(pipe.path(), options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, bytes);
}

TEST_F(FileIoTest, PipeLongerThanTheLimitIsInvalidArgument) {
  std::signal(SIGPIPE, SIG_IGN);
  PipePath pipe(std::string(100000, 'x'));
  ReadFileOptions options;
  options.regular_file_only = false;
  options.max_bytes = 70000;
  const absl::Status s = ReadFileToString(pipe.path(), options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("larger than 70000 bytes"));
}

TEST_F(FileIoTest, PipeIsFailedPreconditionForRegularFilesOnly) {
  std::signal(SIGPIPE, SIG_IGN);
  PipePath pipe("abc");
  const absl::Status s = ReadFileToString(pipe.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), AllOf(StartsWith(pipe.path()), HasSubstr("not a regular file")));
}

// A FIFO with no writer: refused at once, not after waiting for a writer
// that may never come (a repository scan must not hang on one).
TEST_F(FileIoTest, FifoWithoutWriterIsRefusedWithoutWaiting) {
  const std::string path = Path("fifo");
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  std::atomic<bool> done{false};
  // Should the read block in open(), a writer showing up after 5 s releases
  // it and the elapsed time below fails the test instead of hanging it.
  std::thread release([&] {
    for (int i = 0; i < 500 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!done) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = ReadFileToString(path).status();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  done = true;
  release.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a regular file"));
  EXPECT_LT(elapsed, std::chrono::seconds(2));
}

}  // namespace
}  // namespace ssm
