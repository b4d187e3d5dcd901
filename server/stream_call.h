// StreamInfer: one bidirectional stream drives one session. The transport
// (stream_transport.h: raw bytes parsed here, the read window, the write
// queue, gRPC's thread versus the pool, the locking) is shared by every
// streaming protocol; what StreamInfer adds (stream_call.cc) speaks only
// its wire messages: `open` through the session layer's one policy
// (session_open.h), chunks through the session (session_manager.h).
//
// Contract (the proto states it too): one response per request, in order;
// a failed request ends the stream after the responses before it, leaving
// the session detached; a clean half-close after every response ends the
// session; a broken stream leaves it detached for --session_ttl.

#ifndef SSM_SERVER_STREAM_CALL_H_
#define SSM_SERVER_STREAM_CALL_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include "server/service_env.h"

namespace ssm::server {

// A new reactor for one StreamInfer call; gRPC owns it (OnDone deletes it).
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewStreamCall(
    grpc::CallbackServerContext* context, const ServiceEnv* env);

}  // namespace ssm::server

#endif  // SSM_SERVER_STREAM_CALL_H_
