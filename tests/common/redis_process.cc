#include "tests/common/redis_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/common/loopback_port.h"

namespace ssm::testing {
namespace {

// True when 127.0.0.1:port answers a RESP PING with +PONG.
bool Pongs(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const char ping[] = "PING\r\n";
    char reply[16] = {0};
    ok = send(fd, ping, sizeof(ping) - 1, 0) > 0 && recv(fd, reply, sizeof(reply) - 1, 0) > 0 &&
         std::strncmp(reply, "+PONG", 5) == 0;
  }
  close(fd);
  return ok;
}

std::string ReadLog(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisProcess>> RedisProcess::Start(int port,
                                                                  const std::string& dir) {
  std::unique_ptr<RedisProcess> redis(new RedisProcess());
  if (port == 0) {
    absl::StatusOr<int> free = PickFreeLoopbackPort();
    if (!free.ok()) return free.status();
    port = *free;
  }
  redis->port_ = port;
  char tmpl[] = "/tmp/ssm-redis-log-XXXXXX";
  const int log_fd = mkstemp(tmpl);
  if (log_fd < 0) return absl::InternalError("mkstemp failed");
  redis->log_path_ = tmpl;
  std::vector<std::string> args = {
      "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", absl::StrCat(port), "--save", "",
      "--protected-mode",      "no"};
  if (dir.empty()) {
    args.insert(args.end(), {"--appendonly", "no", "--dir", "/tmp"});
  } else {
    args.insert(args.end(), {"--appendonly", "yes", "--appendfsync", "always", "--dir", dir});
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    close(log_fd);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  redis->pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!Pongs(port)) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      redis->pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat("redis-server exited before answering; log:\n", ReadLog(redis->log_path_)));
    }
    if (absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat("redis-server did not answer PING; log:\n", ReadLog(redis->log_path_)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return redis;
}

std::string RedisProcess::url() const { return absl::StrCat("redis://127.0.0.1:", port_); }

void RedisProcess::Pause() {
  if (pid_ > 0) kill(pid_, SIGSTOP);
}

void RedisProcess::Resume() {
  if (pid_ > 0) kill(pid_, SIGCONT);
}

void RedisProcess::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGCONT);
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) != pid_) {
    if (absl::Now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  pid_ = -1;
}

RedisProcess::~RedisProcess() {
  Stop();
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

}  // namespace ssm::testing
