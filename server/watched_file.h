// A configuration file the server re-reads when it changes (the callers
// file, the snapshot keys): polled every `period` for a new modification
// time, size or inode (a Kubernetes Secret mount swaps a symlink, which
// changes the inode), parsed, and swapped in for readers. A new version
// that does not parse is logged and the old one kept, so a bad edit never
// locks everyone out or drops a key mid-flight; the first version must
// parse, or Create fails and the server does not start.
//
// Thread safety: Get may be called from any thread; the poller is its own.

#ifndef SSM_SERVER_WATCHED_FILE_H_
#define SSM_SERVER_WATCHED_FILE_H_

#include <sys/stat.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "ssm/file_io.h"
#include "ssm/threads.h"

namespace ssm::server {

template <typename T>
class WatchedFile {
 public:
  using Parser = std::function<absl::StatusOr<std::shared_ptr<const T>>(absl::string_view text,
                                                                        absl::string_view path)>;

  static absl::StatusOr<std::unique_ptr<WatchedFile>> Create(std::string path, Parser parse,
                                                             absl::Duration period) {
    std::unique_ptr<WatchedFile> file(new WatchedFile(std::move(path), std::move(parse), period));
    absl::Status first = file->Reload();
    if (!first.ok()) return first;
    file->thread_ = std::thread([f = file.get()] {
      ssm::NameThisThread("ssm-watch-file");
      f->Poll();
    });
    return file;
  }

  ~WatchedFile() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }

  // The current version.
  std::shared_ptr<const T> Get() const {
    absl::MutexLock lock(&mu_);
    return value_;
  }

  // Reads and parses the file now if it changed since the last read;
  // OK when it did not change or the new version is in place.
  absl::Status Reload() {
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat(path_, ": cannot stat"));
    }
    const Version version{st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_size, st.st_ino};
    if (version == version_) return absl::OkStatus();
    ssm::ReadFileOptions options;
    options.max_bytes = 1 << 20;  // a configuration file, not a data file
    absl::StatusOr<std::string> text = ssm::ReadFileToString(path_, options);
    if (!text.ok()) return text.status();
    absl::StatusOr<std::shared_ptr<const T>> parsed = parse_(*text, path_);
    if (!parsed.ok()) return parsed.status();
    {
      absl::MutexLock lock(&mu_);
      value_ = *std::move(parsed);
    }
    version_ = version;
    return absl::OkStatus();
  }

 private:
  struct Version {
    int64_t seconds = -1, nanos = -1, size = -1;
    uint64_t inode = 0;
    bool operator==(const Version& o) const {
      return seconds == o.seconds && nanos == o.nanos && size == o.size && inode == o.inode;
    }
  };

  WatchedFile(std::string path, Parser parse, absl::Duration period)
      : path_(std::move(path)), parse_(std::move(parse)), period_(period) {}

  void Poll() {
    while (!stop_.WaitForNotificationWithTimeout(period_)) {
      const Version before = version_;
      absl::Status status = Reload();
      if (!status.ok()) {
        LogfLimited(absl::StrCat("reload ", path_), "%s changed but was not reloaded: %s", path_,
                    status.message());
      } else if (!(version_ == before)) {
        Logf("%s reloaded", path_);
      }
    }
  }

  const std::string path_;
  const Parser parse_;
  const absl::Duration period_;
  Version version_;  // Reload's: the poller's alone once it runs
  mutable absl::Mutex mu_;
  std::shared_ptr<const T> value_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace ssm::server

#endif  // SSM_SERVER_WATCHED_FILE_H_
