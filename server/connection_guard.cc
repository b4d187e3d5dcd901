#include "server/connection_guard.h"

#include <dirent.h>
#include <linux/tcp.h>  // tcp_info with the byte counters (glibc's lacks them)
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace ssm::server {
namespace {

// The inodes of established (01) or half-closed-by-the-peer (08, CLOSE_WAIT:
// still holding a descriptor) TCP sockets whose local port is `port`, from
// one of the kernel's tables (/proc/net/tcp or tcp6; the format is the same
// with longer addresses).
void ReadTcpTable(const char* path, int port, absl::flat_hash_set<uint64_t>* inodes) {
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return;
  char line[512];
  if (std::fgets(line, sizeof(line), f) == nullptr) {  // the header
    std::fclose(f);
    return;
  }
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    // "sl: local:port remote:port st tx:rx tr:when retr uid timeout inode ..."
    char local[64], remote[64], state[8];
    unsigned long long inode = 0;
    int uid = 0, timeout = 0;
    char skip1[32], skip2[32], skip3[32];
    if (std::sscanf(line, "%*s %63s %63s %7s %31s %31s %31s %d %d %llu", local, remote, state,
                    skip1, skip2, skip3, &uid, &timeout, &inode) != 9) {
      continue;
    }
    if (inode == 0) continue;  // not yet accepted: no descriptor
    if (std::strcmp(state, "01") != 0 && std::strcmp(state, "08") != 0) continue;
    const char* colon = std::strrchr(local, ':');
    if (colon == nullptr) continue;
    if (std::strtol(colon + 1, nullptr, 16) != port) continue;
    inodes->insert(inode);
  }
  std::fclose(f);
}

// This process's socket descriptors by inode, from /proc/self/fd.
absl::flat_hash_map<uint64_t, int> OwnSockets() {
  absl::flat_hash_map<uint64_t, int> out;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return out;
  const int own = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == own) continue;
    char target[64];
    const ssize_t n =
        readlink(absl::StrCat("/proc/self/fd/", fd).c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    uint64_t inode = 0;
    if (std::sscanf(target, "socket:[%lu]", &inode) == 1) out[inode] = fd;
  }
  closedir(dir);
  return out;
}

// The bytes the connection on `fd` has received; 0 if unknown (not TCP, or
// a kernel older than 4.1, which fills fewer bytes of tcp_info).
uint64_t BytesReceived(int fd) {
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return 0;
  if (length < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
    return 0;
  }
  return info.tcpi_bytes_received;
}

}  // namespace

ConnectionGuard::ConnectionGuard(Options options) : options_(options) {
  thread_ = std::thread([this] { Loop(); });
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
  absl::flat_hash_set<uint64_t> port_sockets;
  ReadTcpTable("/proc/net/tcp", options_.port, &port_sockets);
  ReadTcpTable("/proc/net/tcp6", options_.port, &port_sockets);
  // The tables are the network namespace's: keep this process's sockets
  // only (another process's connection to the same port number from
  // elsewhere is not ours to count). Reading our descriptors is the costly
  // part (a readlink each), so the table filters first.
  const absl::flat_hash_map<uint64_t, int> own =
      port_sockets.empty() ? absl::flat_hash_map<uint64_t, int>() : OwnSockets();
  std::vector<std::pair<uint64_t, uint64_t>> live;  // (first seen, inode)
  absl::flat_hash_map<uint64_t, uint64_t> seen;
  for (uint64_t inode : port_sockets) {
    if (!own.contains(inode)) continue;
    auto it = first_seen_.find(inode);
    const uint64_t first = it == first_seen_.end() ? scans_ : it->second;
    seen[inode] = first;
    live.emplace_back(first, inode);
  }
  // The kernel's table is read in several read(2)s and is no snapshot:
  // while connections come and go an entry can be skipped. A connection
  // we knew whose socket is still ours keeps its age (else the next scan
  // would take an old client for a new one).
  for (const auto& [inode, first] : first_seen_) {
    if (seen.contains(inode) || !own.contains(inode)) continue;
    seen[inode] = first;
    live.emplace_back(first, inode);
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
  struct Ranked {
    uint64_t first_seen;
    uint64_t bytes_received;
    uint64_t inode;
  };
  std::vector<Ranked> ranked;
  ranked.reserve(live.size());
  for (const auto& [first, inode] : live) {
    ranked.push_back(Ranked{first, BytesReceived(own.at(inode)), inode});
  }
  std::sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
    if (a.first_seen != b.first_seen) return a.first_seen < b.first_seen;
    if (a.bytes_received != b.bytes_received) return a.bytes_received > b.bytes_received;
    return a.inode < b.inode;
  });
  int closed = 0;
  for (size_t i = static_cast<size_t>(cap); i < ranked.size(); ++i) {
    const uint64_t inode = ranked[i].inode;
    const int fd = own.at(inode);
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
