// The session store on Redis (session_store.h), through Debian's hiredis
// 0.14 (which has no TLS: the store runs on a trusted network, or behind a
// TLS tunnel such as stunnel; README "Scaling out" says so).

#include <hiredis/hiredis.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "server/session_store.h"

namespace ssm::server {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'M', 'R', 'E', 'C', '1', '\0'};

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Each script reads the lease and acts only for its holder, atomically:
// Redis runs a script with nothing in between (the fencing the lease
// pattern needs).
constexpr char kAcquire[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
    "return 0";
constexpr char kRenew[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2]) redis.call('PEXPIRE', KEYS[2], ARGV[3]) "
    "return 1 end return 0";
constexpr char kRelease[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1";
constexpr char kPut[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) return 1 end return 0";
constexpr char kDelete[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "redis.call('DEL', KEYS[2]) redis.call('DEL', KEYS[1]) return 1 end return 0";

std::string LeaseKey(absl::string_view id) { return absl::StrCat("ssm:lease:", id); }
std::string RecordKey(absl::string_view id) { return absl::StrCat("ssm:session:", id); }

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

struct Address {
  std::string host, user, password;
  int port = 6379;
  int db = 0;
};

absl::StatusOr<Address> ParseUrl(absl::string_view url) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session_store must be redis://[user:password@]host:port[/db]: ", why));
  };
  if (!absl::ConsumePrefix(&url, "redis://")) return bad("it does not start with redis://");
  Address a;
  if (const size_t at = url.rfind('@'); at != absl::string_view::npos) {
    const absl::string_view credentials = url.substr(0, at);
    url.remove_prefix(at + 1);
    const size_t colon = credentials.find(':');
    if (colon == absl::string_view::npos) {
      a.password = std::string(credentials);
    } else {
      a.user = std::string(credentials.substr(0, colon));
      a.password = std::string(credentials.substr(colon + 1));
    }
  }
  if (const size_t slash = url.find('/'); slash != absl::string_view::npos) {
    if (!absl::SimpleAtoi(url.substr(slash + 1), &a.db) || a.db < 0) return bad("a bad db number");
    url = url.substr(0, slash);
  }
  const size_t colon = url.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return bad("no host:port");
  a.host = std::string(url.substr(0, colon));
  if (!absl::SimpleAtoi(url.substr(colon + 1), &a.port) || a.port <= 0 || a.port > 65535) {
    return bad("a bad port");
  }
  return a;
}

class RedisStore final : public SessionStore {
 public:
  RedisStore(Address address, absl::Duration timeout)
      : address_(std::move(address)), timeout_(timeout) {}

  ~RedisStore() override {
    if (context_ != nullptr) redisFree(context_);
  }

  absl::Status Connect() {
    absl::MutexLock lock(&mu_);
    return ConnectLocked();
  }

  absl::StatusOr<bool> AcquireLease(absl::string_view id, absl::string_view holder,
                                    absl::Duration ttl) override {
    return Script(kAcquire, {LeaseKey(id)}, {std::string(holder), Millis(ttl)});
  }
  absl::StatusOr<bool> RenewLease(absl::string_view id, absl::string_view holder,
                                  absl::Duration ttl, absl::Duration record_ttl) override {
    return Script(kRenew, {LeaseKey(id), RecordKey(id)},
                  {std::string(holder), Millis(ttl), Millis(record_ttl)});
  }
  absl::Status ReleaseLease(absl::string_view id, absl::string_view holder) override {
    return Script(kRelease, {LeaseKey(id)}, {std::string(holder)}).status();
  }

  absl::Status Put(absl::string_view id, absl::string_view holder, const StoredSession& session,
                   absl::Duration ttl) override {
    absl::StatusOr<bool> written =
        Script(kPut, {LeaseKey(id), RecordKey(id)},
               {std::string(holder), EncodeStoredSession(session), Millis(ttl)});
    if (!written.ok()) return written.status();
    if (!*written) return LostLease(id);
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<StoredSession>> Get(absl::string_view id) override {
    const std::string key = RecordKey(id);
    const char* argv[] = {"GET", key.data()};
    const size_t lengths[] = {3, key.size()};
    absl::StatusOr<Reply> reply = Command(2, argv, lengths);
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_NIL) return std::optional<StoredSession>();
    if ((*reply)->type != REDIS_REPLY_STRING) {
      return absl::DataLossError(absl::StrCat("session store: ", key, " is not a string"));
    }
    absl::StatusOr<StoredSession> session =
        DecodeStoredSession(absl::string_view((*reply)->str, (*reply)->len));
    if (!session.ok()) return session.status();
    return std::optional<StoredSession>(*std::move(session));
  }

  absl::Status Delete(absl::string_view id, absl::string_view holder) override {
    absl::StatusOr<bool> deleted =
        Script(kDelete, {LeaseKey(id), RecordKey(id)}, {std::string(holder)});
    if (!deleted.ok()) return deleted.status();
    if (!*deleted) return LostLease(id);
    return absl::OkStatus();
  }

  std::string Describe() const override {
    return absl::StrCat("redis://", address_.host, ":", address_.port, "/", address_.db);
  }

 private:
  static std::string Millis(absl::Duration d) {
    return absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
  }

  static absl::Status LostLease(absl::string_view id) {
    return absl::FailedPreconditionError(
        absl::StrCat("the lease on session ", id.substr(0, 8), "... is held by another stream"));
  }

  absl::Status ConnectLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (context_ != nullptr) {
      redisFree(context_);
      context_ = nullptr;
    }
    const timeval tv = absl::ToTimeval(timeout_);
    redisContext* c = redisConnectWithTimeout(address_.host.c_str(), address_.port, tv);
    if (c == nullptr || c->err) {
      const std::string why = c == nullptr ? "out of memory" : c->errstr;
      if (c != nullptr) redisFree(c);
      return absl::UnavailableError(
          absl::StrCat("session store ", Describe(), ": cannot connect: ", why));
    }
    redisSetTimeout(c, tv);
    context_ = c;
    auto run = [&](std::initializer_list<std::string> words) -> absl::Status {
      std::vector<const char*> argv;
      std::vector<size_t> lengths;
      for (const std::string& w : words) {
        argv.push_back(w.data());
        lengths.push_back(w.size());
      }
      Reply reply(static_cast<redisReply*>(
          redisCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lengths.data())));
      if (reply == nullptr || reply->type == REDIS_REPLY_ERROR) {
        return absl::UnavailableError(absl::StrCat(
            "session store ", Describe(), ": ", *words.begin(), " failed: ",
            reply == nullptr ? context_->errstr : std::string(reply->str, reply->len)));
      }
      return absl::OkStatus();
    };
    absl::Status status;
    if (!address_.password.empty()) {
      status = address_.user.empty() ? run({"AUTH", address_.password})
                                     : run({"AUTH", address_.user, address_.password});
    }
    if (status.ok() && address_.db != 0) status = run({"SELECT", absl::StrCat(address_.db)});
    if (!status.ok()) {
      redisFree(context_);
      context_ = nullptr;
    }
    return status;
  }

  // One command; a broken connection is re-opened once and the command
  // tried again (commands here are idempotent or fenced).
  absl::StatusOr<Reply> Command(int argc, const char** argv, const size_t* lengths) {
    absl::MutexLock lock(&mu_);
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (context_ == nullptr || context_->err) {
        if (absl::Status s = ConnectLocked(); !s.ok()) return s;
      }
      Reply reply(static_cast<redisReply*>(redisCommandArgv(context_, argc, argv, lengths)));
      if (reply == nullptr) continue;  // the connection broke: reconnect once
      if (reply->type == REDIS_REPLY_ERROR) {
        return absl::UnavailableError(
            absl::StrCat("session store ", Describe(), ": ", std::string(reply->str, reply->len)));
      }
      return reply;
    }
    return absl::UnavailableError(
        absl::StrCat("session store ", Describe(), ": ",
                     context_ != nullptr ? context_->errstr : "no connection"));
  }

  absl::StatusOr<bool> Script(const char* script, std::initializer_list<std::string> keys,
                              std::initializer_list<std::string> args) {
    std::vector<std::string> words = {"EVAL", script, absl::StrCat(keys.size())};
    words.insert(words.end(), keys.begin(), keys.end());
    words.insert(words.end(), args.begin(), args.end());
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    for (const std::string& w : words) {
      argv.push_back(w.data());
      lengths.push_back(w.size());
    }
    absl::StatusOr<Reply> reply =
        Command(static_cast<int>(argv.size()), argv.data(), lengths.data());
    if (!reply.ok()) return reply.status();
    if ((*reply)->type != REDIS_REPLY_INTEGER) {
      return absl::UnavailableError(
          absl::StrCat("session store ", Describe(), ": a script answered type ", (*reply)->type));
    }
    return (*reply)->integer == 1;
  }

  const Address address_;
  const absl::Duration timeout_;
  absl::Mutex mu_;
  redisContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace

std::string EncodeStoredSession(const StoredSession& s) {
  std::string out(kMagic, sizeof(kMagic));
  Put<uint32_t>(out, static_cast<uint32_t>(s.owner.size()));
  out += s.owner;
  Put<uint32_t>(out, static_cast<uint32_t>(s.model.size()));
  out += s.model;
  Put<int64_t>(out, s.version);
  Put<int64_t>(out, s.position);
  Put<uint64_t>(out, s.snapshot.size());
  out += s.snapshot;
  return out;
}

absl::StatusOr<StoredSession> DecodeStoredSession(absl::string_view in) {
  auto bad = [](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("session store record: ", why));
  };
  if (in.size() < sizeof(kMagic) || std::memcmp(in.data(), kMagic, sizeof(kMagic)) != 0) {
    return bad("not a session record (bad magic)");
  }
  in.remove_prefix(sizeof(kMagic));
  auto take = [&](size_t n, absl::string_view* out) {
    if (in.size() < n) return false;
    *out = in.substr(0, n);
    in.remove_prefix(n);
    return true;
  };
  auto get = [&](auto* value) {
    absl::string_view bytes;
    if (!take(sizeof(*value), &bytes)) return false;
    std::memcpy(value, bytes.data(), sizeof(*value));
    return true;
  };
  StoredSession s;
  uint32_t owner_len = 0, model_len = 0;
  uint64_t snapshot_len = 0;
  absl::string_view owner, model, snapshot;
  if (!get(&owner_len) || !take(owner_len, &owner) || !get(&model_len) ||
      !take(model_len, &model) || !get(&s.version) || !get(&s.position) || !get(&snapshot_len) ||
      !take(snapshot_len, &snapshot) || !in.empty()) {
    return bad("truncated or with trailing bytes");
  }
  s.owner = std::string(owner);
  s.model = std::string(model);
  s.snapshot = std::string(snapshot);
  return s;
}

absl::StatusOr<std::unique_ptr<SessionStore>> OpenRedisStore(absl::string_view url,
                                                             absl::Duration timeout) {
  absl::StatusOr<Address> address = ParseUrl(url);
  if (!address.ok()) return address.status();
  auto store = std::make_unique<RedisStore>(*std::move(address), timeout);
  if (absl::Status s = store->Connect(); !s.ok()) return s;
  return std::unique_ptr<SessionStore>(std::move(store));
}

}  // namespace ssm::server
