#include "server/connection_guard.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/tcp.h>  // tcp_info with the byte counters (glibc's lacks them)
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/log.h"
#include "ssm/threads.h"

namespace ssm::server {
namespace {

// Linux's TCP states (as in /proc/net/tcp's "st" column).
constexpr uint8_t kTcpEstablished = 1;
constexpr uint8_t kTcpCloseWait = 8;

struct PortSocket {
  int fd = -1;
  uint64_t bytes_received = 0;
};

// Whether `fd` is a connected Unix-domain socket whose local name is
// `path` (a leading NUL: the abstract namespace).
bool IsUnixConnection(int fd, const std::string& path) {
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return false;
  if (addr.sun_family != AF_UNIX || len <= offsetof(sockaddr_un, sun_path)) return false;
  absl::string_view name(addr.sun_path, len - offsetof(sockaddr_un, sun_path));
  if (!name.empty() && name[0] != '\0') name = name.substr(0, name.find('\0'));
  if (name != path) return false;
  sockaddr_un peer{};
  socklen_t peer_len = sizeof(peer);
  return getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0;
}

// This process's sockets that are the server's accepted connections, by
// inode, with their descriptors and the bytes each has received: TCP
// sockets whose local port is `options.port` and whose connection is
// established or half-closed by the peer (CLOSE_WAIT: still holding a
// descriptor), or, with `options.unix_path`, connected Unix-domain sockets
// named by that path (an accepted socket carries its listener's name; the
// listener itself has no peer). Asked of each of
// our own descriptors (fstat, getsockname, TCP_INFO): a few system calls
// per descriptor, where reading the kernel's tables (/proc/net/tcp) walks
// every bucket of the namespace's connection hash, ~6 ms a scan on the
// development VM whatever the connections (5% of a core at one scan every
// 200 ms).
absl::flat_hash_map<uint64_t, PortSocket> OwnSockets(const ConnectionGuard::Options& options) {
  absl::flat_hash_map<uint64_t, PortSocket> out;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return out;
  const int own = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == own) continue;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (!options.unix_path.empty()) {
      if (IsUnixConnection(fd, options.unix_path)) out[st.st_ino] = PortSocket{fd, 0};
      continue;
    }
    if (LocalPort(fd) != options.port) continue;
    tcp_info info{};
    socklen_t info_len = sizeof(info);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &info_len) != 0) continue;
    if (info.tcpi_state != kTcpEstablished && info.tcpi_state != kTcpCloseWait) continue;
    // A kernel older than 4.1 fills fewer bytes: no count, then.
    const bool counted =
        info_len >= offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received);
    out[st.st_ino] = PortSocket{fd, counted ? info.tcpi_bytes_received : 0};
  }
  closedir(dir);
  return out;
}

}  // namespace

int LocalPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  if (addr.ss_family == AF_INET)
    return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  return -1;
}

ConnectionGuard::ConnectionGuard(Options options) : options_(options) {
  thread_ = std::thread([this] {
    ssm::NameThisThread("ssm-conn-guard");
    Loop();
  });
}

ConnectionGuard::~ConnectionGuard() {
  stop_.Notify();
  thread_.join();
}

void ConnectionGuard::Loop() {
  do {
    ScanOnce();
  } while (!stop_.WaitForNotificationWithTimeout(options_.period));
}

void ConnectionGuard::ScanOnce() {
  absl::MutexLock lock(&scan_mu_);
  ++scans_;
  const absl::flat_hash_map<uint64_t, PortSocket> own = OwnSockets(options_);
  struct Live {
    uint64_t first_seen;
    uint64_t bytes_received;
    uint64_t inode;
  };
  std::vector<Live> live;
  absl::flat_hash_map<uint64_t, uint64_t> seen;
  for (const auto& [inode, socket] : own) {
    auto it = first_seen_.find(inode);
    const uint64_t first = it == first_seen_.end() ? scans_ : it->second;
    seen[inode] = first;
    live.push_back(Live{first, socket.bytes_received, inode});
  }
  first_seen_ = std::move(seen);
  open_.store(static_cast<int>(live.size()), std::memory_order_relaxed);
  const int cap = options_.max_connections;
  if (cap <= 0 || static_cast<int>(live.size()) <= cap) return;

  // The newest beyond the cap go. A scan every `period` cannot order the
  // connections it first sees together (nor can their inodes: the kernel
  // hands socket inodes out in per-CPU batches), so among those the ones
  // that carried the least go first: a client that was already calling
  // keeps its connection against a flood of silent ones that came with it.
  std::sort(live.begin(), live.end(), [](const Live& a, const Live& b) {
    if (a.first_seen != b.first_seen) return a.first_seen < b.first_seen;
    if (a.bytes_received != b.bytes_received) return a.bytes_received > b.bytes_received;
    return a.inode < b.inode;
  });
  int closed = 0;
  for (size_t i = static_cast<size_t>(cap); i < live.size(); ++i) {
    const uint64_t inode = live[i].inode;
    const int fd = own.at(inode).fd;
    struct stat st;
    // The descriptor may have been closed and its number reused since it
    // was read: only the very socket is shut down.
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_ino != inode) continue;
    if (shutdown(fd, SHUT_RDWR) == 0) {
      ++closed;
      first_seen_.erase(inode);
    }
  }
  if (closed > 0) {
    closed_.fetch_add(closed, std::memory_order_relaxed);
    LogfLimited("connections over limit",
                "%d connections over --max_connections=%d closed (%d were open)", closed, cap,
                static_cast<int>(live.size()));
  }
}

ProcessStats ReadProcessStats() {
  ProcessStats stats;
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      long long value = 0;
      if (std::sscanf(line, "VmRSS: %lld kB", &value) == 1) stats.resident_bytes = value * 1024;
      if (std::sscanf(line, "Threads: %lld", &value) == 1) stats.threads = value;
    }
    std::fclose(f);
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    int64_t n = 0;
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++n;
    }
    closedir(dir);
    stats.open_fds = n - 1;  // the directory's own descriptor
  }
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    stats.max_fds = static_cast<int64_t>(limit.rlim_cur);
  }
  return stats;
}

}  // namespace ssm::server
