#include "client/connection.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include <grpcpp/security/credentials.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ssm/file_io.h"

namespace ssm::client {
namespace {

// PEM files are a few KiB; a larger one is not what was meant.
constexpr size_t kMaxPemBytes = 1 << 20;

// The PEM text of the file given as `option`, which must hold `marker`
// (the file's code and path in the message when it cannot be read).
absl::StatusOr<std::string> ReadPem(const std::string& option,
                                    const std::string& path,
                                    const char* marker, const char* what) {
  ssm::ReadFileOptions read;
  read.max_bytes = kMaxPemBytes;
  absl::StatusOr<std::string> text = ssm::ReadFileToString(path, read);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat(option, " ", text.status().message()));
  }
  if (!absl::StrContains(*text, marker)) {
    return absl::InvalidArgumentError(absl::StrCat(
        option, " ", path, ": no PEM ", what, " in it (no '", marker, "')"));
  }
  return text;
}

bool TlsOn(const ClientOptions& o) {
  return o.tls || !o.ca_file.empty() || !o.cert_file.empty() ||
         !o.key_file.empty();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TransportCredentials(
    const ClientOptions& o) {
  if (o.cert_file.empty() != o.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both cert_file and key_file (mTLS)");
  }
  if (!TlsOn(o)) {
    if (!o.server_name.empty()) {
      return absl::InvalidArgumentError(
          "server_name is the name to verify in the server's certificate: "
          "it needs TLS (tls, ca_file)");
    }
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPem("ca_file", o.ca_file, "-----BEGIN CERTIFICATE-----", "certificate");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!o.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPem(
        "cert_file", o.cert_file, "-----BEGIN CERTIFICATE-----", "certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key =
        ReadPem("key_file", o.key_file, "PRIVATE KEY-----", "private key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      TransportCredentials(options);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.load_balancing.empty()) {
    args.SetLoadBalancingPolicyName(options.load_balancing);
  }
  if (!options.server_name.empty()) {
    args.SetSslTargetNameOverride(options.server_name);
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
  return grpc::CreateCustomChannel(options.address, *std::move(credentials),
                                   args);
}

// Plain metadata rather than gRPC's call credentials (AccessTokenCredentials):
// those are withheld on a channel without TLS, and the servers' tests, a
// loopback deployment or a TLS-terminating sidecar need the token there too.
absl::StatusOr<std::string> AuthorizationFor(const ClientOptions& options) {
  if (!options.token.empty() && !options.token_file.empty()) {
    return absl::InvalidArgumentError("give token or token_file, not both");
  }
  std::string token = options.token;
  if (!options.token_file.empty()) {
    ssm::ReadFileOptions read;
    read.max_bytes = 64 << 10;
    absl::StatusOr<std::string> text =
        ssm::ReadFileToString(options.token_file, read);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat("token_file ", text.status().message()));
    }
    token = std::string(absl::StripAsciiWhitespace(*text));
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_file ", options.token_file, " holds no token"));
    }
  }
  if (token.empty()) return std::string();
  // gRPC refuses metadata values beyond printable ASCII, with a message
  // that names neither the token nor its source.
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          options.token_file.empty() ? "the token" : "the token in token_file",
          " has a byte that is not printable ASCII, at offset ", i));
    }
  }
  return absl::StrCat("Bearer ", token);
}

Client::Rep::Rep(const ClientOptions& opts) : options(opts) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> made = MakeChannel(options);
  Init(made.ok() ? *std::move(made) : nullptr, made.status());
}

Client::Rep::Rep(std::shared_ptr<grpc::Channel> ch, const ClientOptions& opts)
    : options(opts) {
  absl::Status given = ch != nullptr ? absl::OkStatus()
                                     : absl::InvalidArgumentError(
                                           "the Client was given no channel");
  Init(std::move(ch), std::move(given));
}

void Client::Rep::Init(std::shared_ptr<grpc::Channel> ch,
                       absl::Status channel_status) {
  absl::StatusOr<std::string> auth = AuthorizationFor(options);
  setup = !auth.ok() ? auth.status() : channel_status;
  if (!setup.ok()) return;
  authorization = *std::move(auth);
  channel = std::move(ch);
  inference = ssm::v1::Inference::NewStub(channel);
  math = ssm::v1::Math::NewStub(channel);
  health = grpc::health::v1::Health::NewStub(channel);
}

void Client::Rep::Authorize(grpc::ClientContext* context) const {
  if (!authorization.empty()) context->AddMetadata("authorization", authorization);
}

void Client::Rep::PrepareUnary(grpc::ClientContext* context,
                               bool with_token) const {
  if (options.deadline != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
  }
  context->set_wait_for_ready(options.wait_for_ready);
  if (with_token) Authorize(context);
}

std::unique_ptr<grpc::ClientContext> Client::Rep::NewStreamContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  Authorize(context.get());
  return context;
}

Client::Client(const ClientOptions& options)
    : rep_(std::make_unique<Rep>(options)) {}

Client::Client(std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options)
    : rep_(std::make_unique<Rep>(std::move(channel), options)) {}

Client::~Client() = default;

const std::shared_ptr<grpc::Channel>& Client::channel() const {
  return rep_->channel;
}

const ClientOptions& Client::options() const { return rep_->options; }

absl::Status Client::status() const { return rep_->setup; }

void Client::AuthorizeContext(grpc::ClientContext* context) const {
  rep_->Authorize(context);
}

bool Client::WaitForConnected(absl::Duration timeout) {
  if (!rep_->setup.ok()) return false;
  return rep_->channel->WaitForConnected(
      absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace ssm::client
