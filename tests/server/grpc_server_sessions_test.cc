// Sessions beyond one stream: snapshots (from a stream, ExportState,
// Infer's return_state) resumed or imported elsewhere, reattaching after a
// broken stream, the snapshot errors, and the expiry of detached sessions.

#include <string>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "grpc_server_fixture.h"

namespace ssm::server::testing {
namespace {

TEST_F(GrpcServerTest, SnapshotsMoveSessionsBetweenStreams) {
  const v1::Tensor input = MakeInput(1, 150);
  OpenedStream a = Open(OpenModel("legt-delay"));
  v1::StreamResponse first;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 0, 100), &first, /*want_state=*/true));
  ASSERT_TRUE(first.has_state());
  EXPECT_EQ(first.state().model(), "legt-delay");
  EXPECT_EQ(first.state().version(), 1);
  EXPECT_EQ(first.state().position(), 100);
  EXPECT_EQ(first.state().batch(), 1);
  EXPECT_EQ(first.state().fingerprint(), ShippedModel("legt-delay")->fingerprint());

  // ExportState of the attached session: the same bytes.
  v1::ExportStateResponse exported;
  ASSERT_TRUE(ExportState(a.opened.session_id(), &exported).ok());
  EXPECT_EQ(exported.state().data(), first.state().data());

  // Resume in a second stream, and import as a detached session.
  OpenedStream b = Open(ResumeFrom(first.state()));
  EXPECT_EQ(b.opened.position(), 100);
  EXPECT_NE(b.opened.session_id(), a.opened.session_id());

  v1::ImportStateRequest import;
  *import.mutable_state() = first.state();
  import.set_model("legt-delay");
  v1::ImportStateResponse imported;
  ASSERT_TRUE(ImportState(import, &imported).ok());
  EXPECT_EQ(imported.position(), 100);
  OpenedStream c = Open(Reattach(imported.session_id()));
  EXPECT_EQ(c.opened.position(), 100);

  // All three continue identically.
  v1::StreamResponse ra, rb, rc;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 100, 150), &ra));
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, 100, 150), &rb));
  ASSERT_TRUE(SendChunk(c.stream.get(), Slice(input, 100, 150), &rc));
  ExpectClose(rb.output(), ra.output(), 0);
  ExpectClose(rc.output(), ra.output(), 0);
  EXPECT_EQ(rc.position(), 150);
  for (OpenedStream* s : {&a, &b, &c}) EXPECT_TRUE(Close(*s).ok());
}

TEST_F(GrpcServerTest, InferReturnsStateToContinueInAStream) {
  const v1::Tensor input = MakeInput(1, 130);
  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("s4-demo", input), &whole).ok());

  v1::InferRequest request = InferRequestFor("s4-demo", Slice(input, 0, 80));
  request.set_return_state(true);
  v1::InferResponse head;
  ASSERT_TRUE(Infer(request, &head).ok());
  ASSERT_TRUE(head.has_state());
  EXPECT_EQ(head.state().position(), 80);
  ExpectClose(head.output(), Slice(whole.output(), 0, 80));

  OpenedStream s = Open(ResumeFrom(head.state()));
  v1::StreamResponse tail;
  ASSERT_TRUE(SendChunk(s.stream.get(), Slice(input, 80, 130), &tail));
  ExpectClose(tail.output(), Slice(whole.output(), 80, 130));
  EXPECT_TRUE(Close(s).ok());
}

TEST_F(GrpcServerTest, BrokenStreamDetachesAndCanBeReattached) {
  const v1::Tensor input = MakeInput(1, 60);
  OpenedStream a = Open(OpenModel("legt-delay"));
  v1::StreamResponse first;
  ASSERT_TRUE(SendChunk(a.stream.get(), Slice(input, 0, 30), &first));
  const std::string id = a.opened.session_id();

  // While attached, nobody else may take it.
  const v1::StreamOpen reattach = Reattach(id);
  grpc::Status status;
  Open(reattach, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  Cancel(a);
  ASSERT_TRUE(WaitForDetached(1));

  OpenedStream b = Open(reattach, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(b.opened.session_id(), id);
  EXPECT_EQ(b.opened.position(), 30);
  v1::StreamResponse second;
  ASSERT_TRUE(SendChunk(b.stream.get(), Slice(input, 30, 60), &second));
  EXPECT_EQ(second.position(), 60);

  v1::InferResponse whole;
  ASSERT_TRUE(Infer(InferRequestFor("legt-delay", input), &whole).ok());
  ExpectClose(second.output(), Slice(whole.output(), 30, 60));
  EXPECT_TRUE(Close(b).ok());
}

TEST_F(GrpcServerTest, SnapshotErrors) {
  OpenedStream s = Open(OpenModel("legt-delay"));
  v1::StreamResponse response;
  ASSERT_TRUE(SendChunk(s.stream.get(), MakeInput(1, 5), &response, true));

  v1::ImportStateRequest import;
  *import.mutable_state() = response.state();
  import.set_model("legs-memory");  // another model's weights
  v1::ImportStateResponse imported;
  grpc::Status status = ImportState(import, &imported);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  import.set_model("");  // falls back to state.model
  std::string data = response.state().data();
  data[data.size() - 9] ^= 1;
  import.mutable_state()->set_data(data);
  status = ImportState(import, &imported);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);

  v1::StreamOpen resume;
  resume.mutable_resume_from()->set_data("not a snapshot");
  resume.set_model("legt-delay");
  Open(resume, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);

  v1::ExportStateResponse exported;
  EXPECT_EQ(ExportState("ffffffffffffffffffffffffffffffff", &exported).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ExportState("", &exported).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Close(s).ok());
}

TEST_F(GrpcServerTest, DetachedSessionsExpire) {
  StartServerWith([](ServerOptions& o) { o.session_ttl = absl::Milliseconds(300); });
  OpenedStream s = Open(OpenModel("legt-delay"));
  Cancel(s);
  ASSERT_TRUE(WaitForDetached(1));
  // The sweep (every ttl/10) evicts it; then it is gone.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (server_->sessions().GetStats().evicted_total == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->sessions().GetStats().evicted_total, 1u);
  grpc::Status status;
  Open(Reattach(s.opened.session_id()), &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace ssm::server::testing
