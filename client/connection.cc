#include "client/connection.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace ssm::client {

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.load_balancing.empty()) {
    args.SetLoadBalancingPolicyName(options.load_balancing);
  }
  auto ms = [](absl::Duration d) {
    return static_cast<int>(
        std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 3600 * 1000));
  };
  const int initial = ms(options.reconnect_backoff);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, initial);
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC uses it as the connect
  // timeout, and a short one cuts off handshakes with a busy server.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              std::max(initial, ms(options.max_reconnect_backoff)));
  return grpc::CreateCustomChannel(options.address,
                                   grpc::InsecureChannelCredentials(), args);
}

Client::Rep::Rep(std::shared_ptr<grpc::Channel> ch, const ClientOptions& opts)
    : options(opts),
      channel(std::move(ch)),
      inference(ssm::v1::Inference::NewStub(channel)),
      math(ssm::v1::Math::NewStub(channel)),
      health(grpc::health::v1::Health::NewStub(channel)) {}

void Client::Rep::PrepareUnary(grpc::ClientContext* context) const {
  if (options.deadline != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
  }
  context->set_wait_for_ready(options.wait_for_ready);
}

std::unique_ptr<grpc::ClientContext> Client::Rep::NewStreamContext() const {
  return std::make_unique<grpc::ClientContext>();
}

Client::Client(const ClientOptions& options)
    : Client(MakeChannel(options), options) {}

Client::Client(std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options)
    : rep_(std::make_unique<Rep>(std::move(channel), options)) {}

Client::~Client() = default;

const std::shared_ptr<grpc::Channel>& Client::channel() const {
  return rep_->channel;
}

const ClientOptions& Client::options() const { return rep_->options; }

bool Client::WaitForConnected(absl::Duration timeout) {
  return rep_->channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace ssm::client
