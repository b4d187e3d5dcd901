// The connection cap (connection_guard.h), on real loopback sockets: the
// guard counts this process's connections on a port and shuts down the
// newest past the cap, leaving the older ones and other ports alone; the
// same for a server on a Unix-domain socket.

#include "server/connection_guard.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "server/log.h"

namespace ssm::server {
namespace {

class Listener {
 public:
  Listener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 128), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() {
    for (int fd : accepted_) close(fd);
    for (int fd : clients_) close(fd);
    close(fd_);
  }
  int port() const { return port_; }
  // The server's end of the last connection accepted.
  int last_accepted() const { return accepted_.back(); }

  // Connects a client and accepts it; returns the client's end.
  int Connect() {
    const int c = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    EXPECT_EQ(connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    accepted_.push_back(accept(fd_, nullptr, nullptr));
    clients_.push_back(c);
    return c;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> accepted_, clients_;
};

// A Unix-domain listener at `path` (a leading NUL: the abstract
// namespace), with the same Connect as Listener.
class UnixListener {
 public:
  explicit UnixListener(std::string path) : path_(std::move(path)) {
    if (path_[0] != '\0') unlink(path_.c_str());
    fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    const sockaddr_un addr = Address();
    EXPECT_EQ(bind(fd_, reinterpret_cast<const sockaddr*>(&addr), AddressLength()), 0)
        << std::strerror(errno);
    EXPECT_EQ(listen(fd_, 128), 0);
  }
  ~UnixListener() {
    for (int fd : accepted_) close(fd);
    for (int fd : clients_) close(fd);
    close(fd_);
    if (path_[0] != '\0') unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

  int Connect() {
    const int c = socket(AF_UNIX, SOCK_STREAM, 0);
    const sockaddr_un addr = Address();
    EXPECT_EQ(connect(c, reinterpret_cast<const sockaddr*>(&addr), AddressLength()), 0);
    accepted_.push_back(accept(fd_, nullptr, nullptr));
    clients_.push_back(c);
    return c;
  }

 private:
  sockaddr_un Address() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    return addr;
  }
  socklen_t AddressLength() const {
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size() +
                                  (path_[0] == '\0' ? 0 : 1));
  }

  std::string path_;
  int fd_ = -1;
  std::vector<int> accepted_, clients_;
};

// Whether the server side shut the connection down: the client reads EOF.
bool ClosedByServer(int client) {
  const int flags = fcntl(client, F_GETFL);
  fcntl(client, F_SETFL, flags | O_NONBLOCK);
  char byte;
  const ssize_t n = recv(client, &byte, 1, 0);
  const int err = errno;
  fcntl(client, F_SETFL, flags);
  if (n == 0) return true;
  EXPECT_TRUE(n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) << "recv " << n << " errno " << err;
  return false;
}

class ConnectionGuardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetLogEnabled(false); }
  static void TearDownTestSuite() { SetLogEnabled(true); }
};

TEST_F(ConnectionGuardTest, CountsOnlyThisPortsAcceptedConnections) {
  Listener mine, other;
  ConnectionGuard guard({.port = mine.port(), .max_connections = 0, .period = absl::Hours(1)});
  guard.ScanOnce();
  EXPECT_EQ(guard.open(), 0);
  for (int i = 0; i < 5; ++i) mine.Connect();
  for (int i = 0; i < 3; ++i) other.Connect();
  guard.ScanOnce();
  EXPECT_EQ(guard.open(), 5);
  EXPECT_EQ(guard.closed_over_limit(), 0u);
}

TEST_F(ConnectionGuardTest, TheNewestPastTheCapAreShutDown) {
  Listener listener;
  ConnectionGuard guard({.port = listener.port(), .max_connections = 4, .period = absl::Hours(1)});
  std::vector<int> first, later;
  for (int i = 0; i < 4; ++i) first.push_back(listener.Connect());
  guard.ScanOnce();  // the first four are the oldest
  for (int i = 0; i < 6; ++i) later.push_back(listener.Connect());
  guard.ScanOnce();
  EXPECT_EQ(guard.closed_over_limit(), 6u);
  for (int c : first) EXPECT_FALSE(ClosedByServer(c));
  for (int c : later) EXPECT_TRUE(ClosedByServer(c));
  // Shut down, not closed (the descriptors are still the owner's to close):
  // the next scan counts the four that are left.
  guard.ScanOnce();
  EXPECT_EQ(guard.open(), 4);
  EXPECT_EQ(guard.closed_over_limit(), 6u);
}

// Connections first seen in the same scan cannot be ordered by when they
// came (nor by inode: the kernel numbers sockets in per-CPU batches): the
// one that has carried bytes is kept, the silent ones go. The talking one
// is made last here, so an order by inode would take it for the newest.
TEST_F(ConnectionGuardTest, AmongConnectionsSeenTogetherTheSilentOnesGoFirst) {
  Listener listener;
  ConnectionGuard guard({.port = listener.port(), .max_connections = 1, .period = absl::Hours(1)});
  // The thread's first scan (at construction) must not fall among the
  // connects below: it would make the first of them the oldest.
  while (guard.scans() == 0) usleep(1000);
  std::vector<int> silent;
  for (int i = 0; i < 8; ++i) silent.push_back(listener.Connect());
  const int talking = listener.Connect();
  const std::string bytes(1000, 'x');
  ASSERT_EQ(send(talking, bytes.data(), bytes.size(), 0), 1000);
  // Loopback delivers in a softirq that may run a moment later: wait
  // until the server's end has the bytes.
  int queued = 0;
  for (int i = 0; i < 1000 && queued < 1000; ++i) {
    ASSERT_EQ(ioctl(listener.last_accepted(), FIONREAD, &queued), 0);
    if (queued < 1000) usleep(1000);
  }
  ASSERT_EQ(queued, 1000);
  guard.ScanOnce();
  EXPECT_EQ(guard.closed_over_limit(), 8u);
  EXPECT_FALSE(ClosedByServer(talking));
  for (int c : silent) EXPECT_TRUE(ClosedByServer(c));
}

TEST_F(ConnectionGuardTest, OnAUnixSocketItCountsAndCapsThatSocketsConnections) {
  const std::string dir = ::testing::TempDir();
  UnixListener mine(dir + "/guard-mine-" + std::to_string(getpid()) + ".sock");
  UnixListener other(dir + "/guard-other-" + std::to_string(getpid()) + ".sock");
  Listener tcp;
  ConnectionGuard guard({.unix_path = mine.path(), .max_connections = 3, .period = absl::Hours(1)});
  std::vector<int> first, later;
  for (int i = 0; i < 3; ++i) first.push_back(mine.Connect());
  for (int i = 0; i < 2; ++i) other.Connect();
  for (int i = 0; i < 2; ++i) tcp.Connect();
  guard.ScanOnce();
  EXPECT_EQ(guard.open(), 3);  // not the listener, the other socket's or TCP's
  for (int i = 0; i < 4; ++i) later.push_back(mine.Connect());
  guard.ScanOnce();
  EXPECT_EQ(guard.closed_over_limit(), 4u);
  for (int c : first) EXPECT_FALSE(ClosedByServer(c));
  for (int c : later) EXPECT_TRUE(ClosedByServer(c));
}

TEST_F(ConnectionGuardTest, OnAnAbstractUnixSocketItCountsThatName) {
  using namespace std::string_literals;
  UnixListener mine("\0ssm-guard-test-"s + std::to_string(getpid()));
  UnixListener longer(mine.path() + "-2");  // a name that starts like it
  ConnectionGuard guard({.unix_path = mine.path(), .max_connections = 0, .period = absl::Hours(1)});
  for (int i = 0; i < 2; ++i) mine.Connect();
  for (int i = 0; i < 3; ++i) longer.Connect();
  guard.ScanOnce();
  EXPECT_EQ(guard.open(), 2);
}

TEST_F(ConnectionGuardTest, ProcessStatsAreRead) {
  const ProcessStats before = ReadProcessStats();
  EXPECT_GT(before.resident_bytes, 0);
  EXPECT_GT(before.threads, 0);
  EXPECT_GT(before.max_fds, 0);
  const int extra = dup(0);
  EXPECT_EQ(ReadProcessStats().open_fds, before.open_fds + 1);
  close(extra);
}

}  // namespace
}  // namespace ssm::server
