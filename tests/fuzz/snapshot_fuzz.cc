// Fuzzes snapshot decoding and import: ssm::Session::Import against the
// tiny streamable models, and the server's session-opening policy
// (server::OpenSession with a snapshot, which goes through the catalog's
// version matching and registers the session).
//
// Input: 4 control bytes, then the snapshot.
//   byte 0  bit 0: restore the trailing CRC-32C first (so mutations reach
//                  the fields behind the checksum); bit 1: OpenSession
//                  instead of Session::Import; bit 2: OpenSession attach
//   byte 1  the model: Session::Import's (legt, legs, delay, s4) or
//           OpenSession's name ("", legt, legs, delay, s4, s4-bidi, broken,
//           nope), modulo their count
//   byte 2  OpenSession's version (0..3); byte 3 its batch (as int8)
//
// Contracts checked besides the sanitizers':
//   - Import fails only with DataLoss, FailedPrecondition or
//     InvalidArgument; OpenSession also with NotFound and
//     ResourceExhausted; messages stay bounded (they reach clients);
//   - an imported session exports exactly the bytes it was imported from;
//   - a chunk run on it either succeeds or leaves it exactly as it was;
//   - OpenSession leaves no session behind when it refuses, and the one it
//     opens closes.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "server/session_manager.h"
#include "server/session_open.h"
#include "ssm/session.h"

namespace ssm::fuzz {
namespace {

struct Models {
  std::vector<std::shared_ptr<const Model>> streamable;
};

const Models& TheModels() {
  static const Models* const models = [] {
    const server::ModelCatalog& catalog = Catalog();
    auto* m = new Models;
    for (const char* name : {"legt", "legs", "delay", "s4"}) {
      m->streamable.push_back(catalog.Find(name, 1)->model);
    }
    return m;
  }();
  return *models;
}

server::SessionManager& Sessions() {
  static server::SessionManager* const sessions =
      new server::SessionManager(server::SessionManager::Options{});
  return *sessions;
}

// A short chunk through an imported session: it runs, or fails leaving the
// state and position as they were. What it exports after a chunk imports
// again.
void RunChunk(const std::shared_ptr<const Model>& model, Session& session) {
  const std::string before = session.ExportState();
  constexpr int kSteps = 3;
  const size_t in = static_cast<size_t>(session.batch()) * kSteps * model->d_input();
  const size_t out = static_cast<size_t>(session.batch()) * kSteps * model->d_output();
  const std::vector<double> x = Wave(in);
  std::vector<double> y(out);
  const absl::Status run = session.Run(x, kSteps, absl::MakeSpan(y));
  if (!run.ok()) {
    CheckCode(run, {absl::StatusCode::kInvalidArgument, absl::StatusCode::kOutOfRange},
              "Session::Run after Import");
    Check(session.ExportState() == before, "a failed chunk changed the imported session");
    return;
  }
  const std::string after = session.ExportState();
  absl::StatusOr<Session> again = Session::Import(model, after);
  // The chunk may legitimately carry the state past float32's range (a
  // forged state near the limit, amplified); anything else must import.
  if (!again.ok()) {
    CheckCode(again.status(), {absl::StatusCode::kInvalidArgument}, "re-Import after a chunk");
    return;
  }
  Check(again->ExportState() == after, "re-imported session exports other bytes");
}

void FuzzImport(uint8_t which, const std::string& snapshot) {
  const std::vector<std::shared_ptr<const Model>>& models = TheModels().streamable;
  const std::shared_ptr<const Model>& model = models[which % models.size()];
  absl::StatusOr<Session> session = Session::Import(model, snapshot);
  if (!session.ok()) {
    CheckCode(session.status(),
              {absl::StatusCode::kDataLoss, absl::StatusCode::kFailedPrecondition,
               absl::StatusCode::kInvalidArgument},
              "Session::Import");
    CheckBoundedMessage(session.status(), "Session::Import");
    return;
  }
  Check(session->ExportState() == snapshot, "an imported session exports other bytes");
  Check(session->position() >= 0 && session->position() <= Session::kMaxPosition,
        "imported position out of range");
  RunChunk(model, *session);
}

void FuzzOpen(uint8_t flags, uint8_t which, uint8_t version, int8_t batch,
              const std::string& snapshot) {
  static constexpr const char* kNames[] = {"", "legt", "legs", "delay", "s4", "s4-bidi",
                                           "broken", "nope"};
  server::OpenSessionRequest request;
  request.model = kNames[which % 8];
  // With no model the snapshot message's name is used.
  request.snapshot_model = kNames[(which / 8) % 8];
  request.version = version % 4;
  request.batch = batch;
  request.has_snapshot = true;
  request.snapshot = snapshot;
  request.attach = (flags & 4) != 0;
  request.field_prefix = request.attach ? "open." : "";
  request.snapshot_field = request.attach ? "resume_from" : "state";
  server::SessionManager& sessions = Sessions();
  absl::StatusOr<std::shared_ptr<server::SessionManager::Entry>> entry =
      server::OpenSession(request, Catalog(), sessions, Limits());
  if (!entry.ok()) {
    CheckCode(entry.status(),
              {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
               absl::StatusCode::kFailedPrecondition, absl::StatusCode::kDataLoss,
               absl::StatusCode::kResourceExhausted},
              "OpenSession");
    CheckBoundedMessage(entry.status(), "OpenSession");
    const server::SessionManager::Stats stats = sessions.GetStats();
    Check(stats.attached == 0 && stats.detached == 0, "a refused OpenSession left a session");
    return;
  }
  const server::SessionSnapshot exported = (*entry)->Export();
  Check(exported.data == snapshot, "an opened session exports other bytes");
  Check(request.batch == 0 || (*entry)->batch() == request.batch, "batch differs from the request");
  sessions.Close((*entry)->id());
  const server::SessionManager::Stats stats = sessions.GetStats();
  Check(stats.attached == 0 && stats.detached == 0, "a closed session is still registered");
}

// Snapshots the project itself writes: each tiny model, batch 1 and 2,
// fresh and after some steps.
void WriteSeeds(const std::string& dir) {
  const std::vector<std::shared_ptr<const Model>>& models = TheModels().streamable;
  for (size_t which = 0; which < models.size(); ++which) {
    const std::shared_ptr<const Model>& model = models[which];
    for (int batch : {1, 2}) {
      for (int steps : {0, 5, 70}) {
        absl::StatusOr<Session> session = Session::Create(model, batch);
        if (!session.ok()) Fail(session.status().ToString());
        if (steps > 0) {
          std::vector<double> y(static_cast<size_t>(batch) * steps * model->d_output());
          const absl::Status run = session->Run(
              Wave(static_cast<size_t>(batch) * steps * model->d_input()), steps, absl::MakeSpan(y));
          if (!run.ok()) Fail(run.ToString());
        }
        const std::string snapshot = session->ExportState();
        const std::string name = absl::StrCat(model->spec().name, "-b", batch, "-t", steps);
        // Import (CRC as written) and OpenSession (attached, by the
        // snapshot message's name, version 0, batch 0).
        const std::string import_control{char{0}, static_cast<char>(which), 0, 0};
        const uint8_t name_index = which == 3 ? 4 : static_cast<uint8_t>(which + 1);
        const std::string open_control{char{2 | 4}, static_cast<char>(name_index * 8), 0, 0};
        WriteSeed(dir, absl::StrCat("import-", name), import_control + snapshot);
        WriteSeed(dir, absl::StrCat("open-", name), open_control + snapshot);
      }
    }
  }
  // ImportState (detached) of s4 on version 2, whose weights differ: the
  // snapshot is v1's (FailedPrecondition), and a bad magic.
  absl::StatusOr<Session> s4 = Session::Create(models[3], 1);
  if (!s4.ok()) Fail(s4.status().ToString());
  WriteSeed(dir, "open-s4-wrong-version",
            std::string{char{2}, char{4}, char{2}, char{0}} + s4->ExportState());
  WriteSeed(dir, "import-bad-magic", std::string{char{1}, char{0}, 0, 0} + "SSMSNAQ" +
                                         std::string(40, '\0'));
}

}  // namespace
}  // namespace ssm::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  ssm::fuzz::HandleSeedFlag(argc, argv, ssm::fuzz::WriteSeeds);
  ssm::fuzz::TheModels();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ssm::fuzz;
  if (size < 4) return 0;
  const uint8_t flags = data[0];
  std::string snapshot(reinterpret_cast<const char*>(data) + 4, size - 4);
  if (flags & 1) FixSnapshotCrc(snapshot);
  if (flags & 2) {
    FuzzOpen(flags, data[1], data[2], static_cast<int8_t>(data[3]), snapshot);
  } else {
    FuzzImport(data[1], snapshot);
  }
  return 0;
}
