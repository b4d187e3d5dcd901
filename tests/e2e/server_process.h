// A real ssm_server process for end-to-end tests: started from its binary
// on 127.0.0.1 with a free port, its output captured to a log file, waited
// for until health says SERVING, and stopped by PID.
//
// The child is started with PR_SET_PDEATHSIG = SIGKILL, so a crashed or
// killed test binary never leaves a server running on a shared machine.
//
// Thread safety: none; one test thread drives a ServerProcess.
#ifndef SSMSERVE_TESTS_E2E_SERVER_PROCESS_H_
#define SSMSERVE_TESTS_E2E_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ssm::e2e {

// A port that was free a moment ago (bound on 127.0.0.1:0, then closed).
absl::StatusOr<int> PickFreePort();

class ServerProcess {
 public:
  // Starts `binary` with --address=127.0.0.1:<port>, the shipped model
  // repository, no metrics port and `extra_flags` (which may override any
  // of those), then waits up to `ready_timeout` for health SERVING.
  // port 0: pick a free one. On failure the log is in the message.
  // health_port: where to ask health instead of the main port (a server
  // serving TLS there, whose --health_address is plaintext).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::vector<std::string>& extra_flags = {}, int port = 0,
      absl::Duration ready_timeout = absl::Seconds(30), int health_port = 0);

  // Kills the process (SIGKILL) if it still runs and reaps it.
  ~ServerProcess();

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:<port>"

  // Sends `signal` to the process (by PID).
  void Signal(int signal);

  // Waits up to `timeout` for the process to exit; its exit code, or
  // 128 + signal when a signal ended it. DEADLINE_EXCEEDED if it still runs.
  absl::StatusOr<int> WaitExit(absl::Duration timeout);

  // False once the process has exited (reaping it).
  bool Running();

  // What the server printed so far.
  std::string Log() const;

 private:
  ServerProcess() = default;
  absl::Status WaitServing(absl::Duration timeout, int health_port);

  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
  bool reaped_ = false;
  int exit_code_ = 0;
};

}  // namespace ssm::e2e

#endif  // SSMSERVE_TESTS_E2E_SERVER_PROCESS_H_
