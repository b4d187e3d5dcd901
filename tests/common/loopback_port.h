// Loopback ports for test servers.
//
// A port the kernel hands out is not always one a connection reaches: the
// sandboxes these tests run in refuse connections to a few loopback ports
// whatever listens there (on the development VM 33969, 40467, 44715 and
// 45823: every connect gets ECONNREFUSED), so a server that happened to
// get one looked dead to its first client. Test servers take their ports
// from here, or check the port they were given.
//
// Thread safety: pure functions (each opens and closes its own sockets).

#ifndef SSMSERVE_TESTS_COMMON_LOOPBACK_PORT_H_
#define SSMSERVE_TESTS_COMMON_LOOPBACK_PORT_H_

#include "absl/status/statusor.h"

namespace ssm::testing {

// True when a TCP connection to 127.0.0.1:`port` is accepted by whatever
// listens there (it is closed at once; servers see a client that left).
bool LoopbackPortReachable(int port);

// A free port on 127.0.0.1 that a connection reaches: bound, listened on
// and connected to before it is released (a server then binds it; another
// process may take it in between, which a caller sees as its own bind
// failing). Internal when none is found in 64 tries.
absl::StatusOr<int> PickFreeLoopbackPort();

}  // namespace ssm::testing

#endif  // SSMSERVE_TESTS_COMMON_LOOPBACK_PORT_H_
