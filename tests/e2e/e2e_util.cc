#include "tests/e2e/e2e_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ssm::e2e {

client::Tensor MakeSequence(int64_t batch, int64_t length, int64_t d,
                            uint32_t seed) {
  client::Tensor t{{batch, length, d},
                   std::vector<float>(batch * length * d)};
  uint32_t state = seed * 2654435761u + 12345u;
  size_t i = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < length; ++s) {
      for (int64_t f = 0; f < d; ++f, ++i) {
        state = state * 1664525u + 1013904223u;  // LCG: reproducible noise
        const double noise = (state >> 8) / double(1u << 24) - 0.5;
        t.values[i] = static_cast<float>(
            std::sin(0.07 * s + 0.9 * b + seed) +
            0.4 * std::sin(0.31 * s + 0.5 * f) + 0.1 * noise);
      }
    }
  }
  return t;
}

client::Tensor SliceSteps(const client::Tensor& t, int64_t t0, int64_t t1) {
  const int64_t batch = t.shape[0], length = t.shape[1], d = t.shape[2];
  client::Tensor out{{batch, t1 - t0, d}, {}};
  out.values.reserve(batch * (t1 - t0) * d);
  for (int64_t b = 0; b < batch; ++b) {
    const auto from = t.values.begin() + (b * length + t0) * d;
    out.values.insert(out.values.end(), from, from + (t1 - t0) * d);
  }
  return out;
}

void AppendSteps(client::Tensor* head, const client::Tensor& tail) {
  if (head->shape.empty()) {
    *head = tail;
    return;
  }
  const int64_t batch = head->shape[0], d = head->shape[2];
  const int64_t l1 = head->shape[1], l2 = tail.shape[1];
  std::vector<float> joined;
  joined.reserve(batch * (l1 + l2) * d);
  for (int64_t b = 0; b < batch; ++b) {
    auto h = head->values.begin() + b * l1 * d;
    auto t = tail.values.begin() + b * l2 * d;
    joined.insert(joined.end(), h, h + l1 * d);
    joined.insert(joined.end(), t, t + l2 * d);
  }
  head->shape[1] = l1 + l2;
  head->values = std::move(joined);
}

double MaxRelativeDiff(const client::Tensor& a, const client::Tensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  if (a.shape != b.shape || a.values.size() != b.values.size()) {
    return std::numeric_limits<double>::infinity();
  }
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.values.size(); ++i) {
    diff = std::max(diff, std::abs(double{a.values[i]} - b.values[i]));
    scale = std::max(scale, std::abs(double{b.values[i]}));
  }
  return scale == 0 ? diff : diff / scale;
}

absl::StatusOr<client::Tensor> StreamInChunks(
    client::Stream& stream, const client::Tensor& input,
    const std::vector<int>& pattern) {
  client::Tensor out;
  const int64_t length = input.shape[1];
  const int64_t start = stream.position();
  size_t k = 0;
  for (int64_t t0 = 0; t0 < length; k = (k + 1) % pattern.size()) {
    const int64_t t1 = std::min<int64_t>(length, t0 + pattern[k]);
    client::Tensor chunk = SliceSteps(input, t0, t1);
    absl::StatusOr<client::StreamResult> r =
        stream.RunChunk(chunk.values, static_cast<int>(t1 - t0));
    if (!r.ok()) return r.status();
    if (r->position != stream.position() || r->position != start + t1) {
      return absl::InternalError("position does not count the steps");
    }
    AppendSteps(&out, r->output);
    t0 = t1;
  }
  return out;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to 127.0.0.1:", port));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("cannot send the request");
  }
  std::string response;
  char buffer[16384];
  for (ssize_t n; (n = recv(fd, buffer, sizeof(buffer), 0)) > 0;) response.append(buffer, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("bad response: ", response.substr(0, 80)));
  }
  return response.substr(body + 4);
}

double MetricValue(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, name) && absl::ConsumePrefix(&line, " ")) {
      double value = 0;
      if (absl::SimpleAtod(line, &value)) return value;
    }
  }
  return -1;
}

double Quantile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t at = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[at];
}

std::unique_ptr<client::Client> ClientFor(const ServerProcess& server) {
  client::ClientOptions options;
  options.address = server.address();
  options.deadline = absl::Seconds(20);
  options.reconnect_backoff = absl::Milliseconds(50);
  options.max_reconnect_backoff = absl::Milliseconds(200);
  return std::make_unique<client::Client>(options);
}

namespace {

// Owns the shared server so it is killed when the tests end (also on a
// failed assertion; a crash is covered by the child's PDEATHSIG).
class SharedServerEnvironment : public ::testing::Environment {
 public:
  static std::unique_ptr<ServerProcess>& Instance() {
    static auto* server = new std::unique_ptr<ServerProcess>();
    return *server;
  }
  void TearDown() override { Instance().reset(); }
};

const bool kRegistered = [] {
  ::testing::AddGlobalTestEnvironment(new SharedServerEnvironment());
  return true;
}();

}  // namespace

ServerProcess& SharedServer() {
  (void)kRegistered;
  std::unique_ptr<ServerProcess>& server = SharedServerEnvironment::Instance();
  if (server == nullptr) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> started =
        ServerProcess::Start();
    if (!started.ok()) {
      // Every later use would fail the same way.
      std::fprintf(stderr, "cannot start ssm_server: %s\n",
                   started.status().ToString().c_str());
      std::abort();
    }
    server = *std::move(started);
  }
  return *server;
}

}  // namespace ssm::e2e
