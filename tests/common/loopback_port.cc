#include "tests/common/loopback_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"

namespace ssm::testing {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

}  // namespace

bool LoopbackPortReachable(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  const sockaddr_in addr = Loopback(port);
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

absl::StatusOr<int> PickFreeLoopbackPort() {
  std::string last_error = "every port tried refused connections";
  for (int attempt = 0; attempt < 64; ++attempt) {
    const int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) return absl::InternalError(std::strerror(errno));
    sockaddr_in addr = Loopback(0);
    socklen_t len = sizeof(addr);
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        listen(listener, 1) != 0) {
      last_error = std::strerror(errno);
      close(listener);
      continue;
    }
    const int port = ntohs(addr.sin_port);
    const bool reachable = LoopbackPortReachable(port);
    close(listener);
    if (reachable) return port;
  }
  return absl::InternalError("no loopback port a connection reaches: " + last_error);
}

}  // namespace ssm::testing
