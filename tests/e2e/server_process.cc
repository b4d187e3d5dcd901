#include "tests/e2e/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
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

#include "absl/strings/str_cat.h"
#include "client/ssm_client.h"
#include "tests/common/loopback_port.h"

namespace ssm::e2e {
namespace {

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  if (dir == nullptr || *dir == '\0') dir = std::getenv("TMPDIR");
  return (dir == nullptr || *dir == '\0') ? "/tmp" : dir;
}

}  // namespace

absl::StatusOr<int> PickFreePort() { return ssm::testing::PickFreeLoopbackPort(); }

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::vector<std::string>& extra_flags, int port, absl::Duration ready_timeout,
    int health_port) {
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  if (port == 0) {
    absl::StatusOr<int> free_port = PickFreePort();
    if (!free_port.ok()) return free_port.status();
    port = *free_port;
  }
  server->port_ = port;

  std::string log_template = TempDir() + "/ssm_e2e_server_XXXXXX";
  std::vector<char> name(log_template.begin(), log_template.end());
  name.push_back('\0');
  const int log_fd = mkstemp(name.data());
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("mkstemp: ", std::strerror(errno)));
  }
  server->log_path_ = name.data();

  std::vector<std::string> args = {
      SSM_SERVER_PATH,
      absl::StrCat("--address=127.0.0.1:", port),
      absl::StrCat("--model_repository=", SSM_MODELS_DIR),
      "--metrics_port=0",
  };
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  // Everything the child needs is built before fork: between fork and exec
  // a multithreaded parent's child may only make async-signal-safe calls.
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();

  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    close(log_fd);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  server->pid_ = pid;
  if (absl::Status s = server->WaitServing(ready_timeout, health_port == 0 ? port : health_port);
      !s.ok()) {
    return s;
  }
  return server;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
  }
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", port_); }

void ServerProcess::Signal(int signal) {
  if (pid_ > 0 && !reaped_) kill(pid_, signal);
}

bool ServerProcess::Running() {
  if (reaped_) return false;
  int status;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> ServerProcess::WaitExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "ssm_server (pid ", pid_, ") still runs after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return exit_code_;
}

std::string ServerProcess::Log() const {
  std::ifstream in(log_path_);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

namespace {

// True when 127.0.0.1:port accepts a TCP connection.
bool PortAccepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

absl::Status ServerProcess::WaitServing(absl::Duration timeout, int health_port) {
  const absl::Time deadline = absl::Now() + timeout;
  auto exited = [this] {
    return absl::InternalError(
        absl::StrCat("ssm_server exited with ", exit_code_, " before serving; log:\n", Log()));
  };
  // The listener first, by plain TCP: a gRPC channel whose first attempts
  // were refused reconnects only seconds later (gRPC 1.51's pick_first
  // waits for re-resolution once its subchannel went back to IDLE).
  while (!PortAccepts(health_port)) {
    if (!Running()) return exited();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("ssm_server not listening on port ", health_port, " after ",
                       absl::FormatDuration(timeout), "; log:\n", Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  client::ClientOptions options;
  options.address = absl::StrCat("127.0.0.1:", health_port);
  options.deadline = absl::Seconds(2);
  options.wait_for_ready = true;
  client::Client client(options);
  absl::Status last = absl::UnavailableError("no answer yet");
  while (absl::Now() < deadline) {
    if (!Running()) return exited();
    absl::StatusOr<client::Client::ServingStatus> health = client.Health();
    if (health.ok() && *health == client::Client::ServingStatus::kServing) {
      return absl::OkStatus();
    }
    last =
        health.ok() ? absl::UnavailableError(client::ServingStatusName(*health)) : health.status();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("ssm_server not SERVING after ",
                                                  absl::FormatDuration(timeout), " (",
                                                  last.ToString(), "); log:\n", Log()));
}

}  // namespace ssm::e2e
