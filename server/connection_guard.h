// Bounds the connections a server holds on its TCP port (or its Unix-domain
// socket), and counts them.
//
// gRPC 1.51 has no cap on incoming connections (later releases add
// GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS), and a client can open
// thousands in a fraction of a second, each an open file descriptor and
// buffers. Idle connections are closed by gRPC itself
// (--max_connection_idle, keepalive); this closes the excess.
//
// How: every `period` the guard asks each of this process's descriptors
// (/proc/self/fd: fstat, getsockname, TCP_INFO) for the TCP sockets whose
// local port is the server's and whose connection is established (or
// half-closed by the peer) — or, for a server on a Unix-domain socket, the
// connected sockets named by its path — remembering when it first saw each
// (by inode).
// Past `max_connections`, the newest ones beyond the cap are shut down
// (shutdown(2), never close(2): the descriptor stays gRPC's, which sees
// the connection end and cleans it up as if the peer had left; the fd is
// checked to be the same socket right before, so a reused descriptor
// number is never hit). Older connections, whose clients were there
// first, are kept; among those first seen in the same scan (whose order a
// scan cannot tell, nor can socket inodes, numbered in per-CPU batches),
// the ones that have received the most bytes are kept (TCP only: a
// Unix-domain socket does not count them, and its ties go by inode). A
// refused client
// sees its connection closed (UNAVAILABLE) and may retry once others are
// gone.
//
// Thread safety: the guard runs its own thread; the accessors may be
// called from any thread.

#ifndef SSM_SERVER_CONNECTION_GUARD_H_
#define SSM_SERVER_CONNECTION_GUARD_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace ssm::server {

class ConnectionGuard {
 public:
  struct Options {
    int port = 0;             // the server's TCP port
    std::string unix_path;    // or its Unix-domain socket's path (then port is unused)
    int max_connections = 0;  // 0: count only, never close
    absl::Duration period = absl::Milliseconds(200);
  };

  explicit ConnectionGuard(Options options);
  ~ConnectionGuard();  // stops and joins the thread

  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // Connections open at the last scan.
  int open() const { return open_.load(std::memory_order_relaxed); }
  // Connections shut down for being past the cap, since construction.
  uint64_t closed_over_limit() const { return closed_.load(std::memory_order_relaxed); }

  // One scan now (the thread calls it every period, starting at
  // construction; tests call it to avoid waiting). Serialized with the
  // thread's.
  void ScanOnce();
  // Scans done so far, the thread's and ScanOnce's.
  uint64_t scans() const {
    absl::MutexLock lock(&scan_mu_);
    return scans_;
  }

 private:
  void Loop();

  const Options options_;
  std::atomic<int> open_{0};
  std::atomic<uint64_t> closed_{0};
  mutable absl::Mutex scan_mu_;
  // Socket inode -> the scan that first saw it (its age).
  absl::flat_hash_map<uint64_t, uint64_t> first_seen_ ABSL_GUARDED_BY(scan_mu_);
  uint64_t scans_ ABSL_GUARDED_BY(scan_mu_) = 0;
  absl::Notification stop_;
  std::thread thread_;
};

// This process's resident memory, open file descriptors, descriptor limit
// and threads, from /proc/self (zeros where unreadable).
// The local port of socket `fd` (IPv4 or IPv6); -1 for anything else.
int LocalPort(int fd);

struct ProcessStats {
  int64_t resident_bytes = 0;
  int64_t open_fds = 0;
  int64_t max_fds = 0;
  int64_t threads = 0;
};
ProcessStats ReadProcessStats();

}  // namespace ssm::server

#endif  // SSM_SERVER_CONNECTION_GUARD_H_
