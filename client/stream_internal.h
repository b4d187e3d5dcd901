// Stream::Rep (internal to ssm_client_lib): one StreamInfer call and its
// bookkeeping. The call, its open handshake and the public Stream methods
// are in stream.cc; reopening and replaying it (resume) in resume.cc.
//
// Two locks. `write_mu` serializes everything that writes to or replaces
// the call (Send's Write, WritesDone, Finish, reopening); `mu` guards the
// bookkeeping both sides read. Lock order: write_mu, then mu. Only the
// reader side (Receive) ever replaces the call, so it can Read without a
// lock while a Send writes (gRPC allows one Read concurrent with one Write).
#ifndef SSMSERVE_CLIENT_STREAM_INTERNAL_H_
#define SSMSERVE_CLIENT_STREAM_INTERNAL_H_

#include <cstdint>
#include <deque>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/connection.h"
#include "client/resume.h"
#include "client/ssm_client.h"
#include "ssm/v1/ssm_service.grpc.pb.h"

namespace ssm::client {

using StreamCall =
    grpc::ClientReaderWriter<ssm::v1::StreamRequest, ssm::v1::StreamResponse>;

struct Stream::Rep {
  Rep(Client::Rep* client, const StreamOptions& options)
      : client(client),
        options(options),
        max_in_flight(options.max_in_flight),
        resume(options.resume) {}

  Client::Rep* const client;
  const StreamOptions options;

  absl::Mutex write_mu ABSL_ACQUIRED_BEFORE(mu);
  // Replaced under write_mu and mu, by the reader side only.
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<StreamCall> call;
  bool finished = true;        // Finish() was called on `call` (write_mu)
  int64_t sent_position = 0;   // steps sent (write_mu)

  mutable absl::Mutex mu;
  ssm::v1::StreamOpened opened ABSL_GUARDED_BY(mu);
  int max_in_flight ABSL_GUARDED_BY(mu) = 0;
  std::deque<internal::SentChunk> unacked ABSL_GUARDED_BY(mu);
  internal::ResumeLog resume ABSL_GUARDED_BY(mu);
  int64_t position ABSL_GUARDED_BY(mu) = 0;
  bool write_failed ABSL_GUARDED_BY(mu) = false;
  bool writes_done ABSL_GUARDED_BY(mu) = false;
  bool detached ABSL_GUARDED_BY(mu) = false;
  bool ended ABSL_GUARDED_BY(mu) = false;
  absl::Status end_status ABSL_GUARDED_BY(mu);

  // stream.cc

  // Starts a new call and completes the open handshake. Caller holds
  // write_mu and is the reader side.
  absl::Status OpenCall(const ssm::v1::StreamOpen& open)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  // Ends the current call and returns its status (write_mu held).
  absl::Status FinishCall() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  void End(absl::Status status) ABSL_LOCKS_EXCLUDED(mu);
  int64_t ChunkValues(int steps) const ABSL_LOCKS_EXCLUDED(mu);

  // resume.cc

  // The first open: OpenCall, and with resume on, UNAVAILABLE (a draining
  // or unreachable server) retried like a broken stream would be.
  absl::Status OpenRetrying(const ssm::v1::StreamOpen& open)
      ABSL_LOCKS_EXCLUDED(write_mu, mu);
  // After the call failed with `failure`: reopen and replay if the resume
  // policy allows, else return `failure`. Reader side.
  absl::Status Recover(absl::Status failure) ABSL_LOCKS_EXCLUDED(write_mu, mu);
  absl::Status ReopenOnce() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu);
  bool resume_durable() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return resume.durable();
  }
};

}  // namespace ssm::client

#endif  // SSMSERVE_CLIENT_STREAM_INTERNAL_H_
