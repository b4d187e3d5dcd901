#include "server/callers.h"

#include <fnmatch.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/echo.h"

namespace ssm::server {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view source, absl::string_view where, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", where, ": ", why));
}

// The strings of `entry[key]` (absent: none); an error unless it is an
// array of non-empty strings.
absl::StatusOr<std::vector<std::string>> Strings(const Json& entry, const char* key,
                                                 absl::string_view source,
                                                 absl::string_view where) {
  std::vector<std::string> out;
  if (!entry.contains(key)) return out;
  const Json& list = entry.at(key);
  if (!list.is_array()) return Bad(source, where, absl::StrCat("\"", key, "\" must be a list"));
  for (const Json& item : list) {
    if (!item.is_string() || item.get<std::string>().empty()) {
      return Bad(source, where, absl::StrCat("\"", key, "\" must hold non-empty strings"));
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

}  // namespace

std::string ScopeName(Scope scope, absl::string_view model) {
  switch (scope) {
    case Scope::kRun:
      return absl::StrCat("run:", model);
    case Scope::kList:
      return "list";
    case Scope::kState:
      return "state";
    case Scope::kMath:
      return "math";
  }
  return "unknown";
}

bool Caller::Has(Scope scope, absl::string_view model) const {
  switch (scope) {
    case Scope::kRun: {
      const std::string name(model);
      for (const std::string& glob : run_globs) {
        if (fnmatch(glob.c_str(), name.c_str(), 0) == 0) return true;
      }
      return false;
    }
    case Scope::kList:
      return list;
    case Scope::kState:
      return state;
    case Scope::kMath:
      return math;
  }
  return false;
}

std::string Sha256(absl::string_view text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

absl::StatusOr<std::shared_ptr<const CallerTable>> CallerTable::Parse(absl::string_view json,
                                                                      absl::string_view source) {
  const Json doc = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Bad(source, "the file", "not valid JSON");
  if (!doc.is_object() || !doc.contains("callers") || !doc.at("callers").is_array()) {
    return Bad(source, "the file", "must be an object with a \"callers\" list");
  }
  for (const auto& [key, unused] : doc.items()) {
    if (key != "callers")
      return Bad(source, "the file", absl::StrCat("unknown key \"", Echo(key), "\""));
  }
  auto table = std::shared_ptr<CallerTable>(new CallerTable());
  absl::flat_hash_set<std::string> principals;
  int index = 0;
  for (const Json& entry : doc.at("callers")) {
    const std::string where = absl::StrCat("callers[", index, "]");
    if (!entry.is_object()) return Bad(source, where, "must be an object");
    for (const auto& [key, unused] : entry.items()) {
      if (key != "principal" && key != "token_sha256" && key != "cert_san" && key != "scopes") {
        return Bad(source, where, absl::StrCat("unknown key \"", Echo(key), "\""));
      }
    }
    Caller caller;
    if (!entry.contains("principal") || !entry.at("principal").is_string() ||
        entry.at("principal").get<std::string>().empty()) {
      return Bad(source, where, "\"principal\" must be a non-empty string");
    }
    caller.principal = entry.at("principal").get<std::string>();
    if (!principals.insert(caller.principal).second) {
      return Bad(source, where,
                 absl::StrCat("principal \"", Echo(caller.principal), "\" is listed twice"));
    }
    absl::StatusOr<std::vector<std::string>> tokens = Strings(entry, "token_sha256", source, where);
    if (!tokens.ok()) return tokens.status();
    absl::StatusOr<std::vector<std::string>> sans = Strings(entry, "cert_san", source, where);
    if (!sans.ok()) return sans.status();
    absl::StatusOr<std::vector<std::string>> scopes = Strings(entry, "scopes", source, where);
    if (!scopes.ok()) return scopes.status();
    if (tokens->empty() && sans->empty()) {
      return Bad(source, where, "needs a \"token_sha256\" or a \"cert_san\" to be known by");
    }
    for (const std::string& scope : *scopes) {
      if (absl::StartsWith(scope, "run:") && scope.size() > 4) {
        caller.run_globs.push_back(scope.substr(4));
      } else if (scope == "list") {
        caller.list = true;
      } else if (scope == "state") {
        caller.state = true;
      } else if (scope == "math") {
        caller.math = true;
      } else {
        return Bad(source, where,
                   absl::StrCat("unknown scope \"", Echo(scope),
                                "\" (scopes: run:<model glob>, list, state, math)"));
      }
    }
    const int at = static_cast<int>(table->callers_.size());
    for (const std::string& hex : *tokens) {
      std::string digest;
      if (hex.size() != 64 || !absl::c_all_of(hex, absl::ascii_isxdigit)) {
        return Bad(source, where, "token_sha256 entries must be 64 hex digits (sha256sum)");
      }
      digest = absl::HexStringToBytes(hex);
      if (!table->by_token_.emplace(digest, at).second) {
        return Bad(source, where, "a token hash is listed twice");
      }
    }
    for (const std::string& san : *sans) {
      if (!table->by_san_.emplace(san, at).second) {
        return Bad(source, where, absl::StrCat("cert_san \"", Echo(san), "\" is listed twice"));
      }
    }
    table->callers_.push_back(std::move(caller));
    ++index;
  }
  return table;
}

const Caller* CallerTable::ByTokenHash(absl::string_view token_sha256) const {
  auto it = by_token_.find(token_sha256);
  if (it == by_token_.end()) return nullptr;
  // The map found it by the digest; compare again in constant time so the
  // last step of the check does not depend on where the bytes differ.
  if (it->first.size() != token_sha256.size() ||
      CRYPTO_memcmp(it->first.data(), token_sha256.data(), token_sha256.size()) != 0) {
    return nullptr;
  }
  return &callers_[it->second];
}

const Caller* CallerTable::ByCertificate(absl::Span<const std::string> sans) const {
  for (const std::string& san : sans) {
    auto it = by_san_.find(san);
    if (it != by_san_.end()) return &callers_[it->second];
  }
  return nullptr;
}

}  // namespace ssm::server
