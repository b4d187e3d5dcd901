// A real redis-server (Debian's) for tests: started on 127.0.0.1 at a free
// port with no persistence, stopped by PID (SIGKILL if it lingers), its
// output in a temporary log. The child dies with the test process
// (PR_SET_PDEATHSIG), so no server outlives a crashed test.
//
// Thread safety: none; one test thread drives a RedisProcess.

#ifndef SSMSERVE_TESTS_COMMON_REDIS_PROCESS_H_
#define SSMSERVE_TESTS_COMMON_REDIS_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace ssm::testing {

class RedisProcess {
 public:
  // port 0: a free one. With `dir`, it keeps an append-only file there, so
  // a server started again on the same folder has the data back; without,
  // nothing persists. Fails (with the log) when redis-server is missing or
  // does not answer PING within a few seconds.
  static absl::StatusOr<std::unique_ptr<RedisProcess>> Start(int port = 0,
                                                             const std::string& dir = "");
  ~RedisProcess();

  int port() const { return port_; }
  std::string url() const;  // redis://127.0.0.1:<port>

  // SIGSTOP / SIGCONT: a Redis that hangs (commands time out) and comes back.
  void Pause();
  void Resume();
  // Stops it (SIGTERM, then SIGKILL) and waits; Start again on port() to
  // bring a fresh, empty one back.
  void Stop();

 private:
  RedisProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

}  // namespace ssm::testing

#endif  // SSMSERVE_TESTS_COMMON_REDIS_PROCESS_H_
