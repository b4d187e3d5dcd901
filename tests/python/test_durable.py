"""Durable sessions from Python (issue 12): against servers that keep
sessions in a store (--session_store, StreamOpened.durable), a session
resumes by its id alone, on any replica, without snapshots.

First against a stand-in server in this process (a running sum for a
model, a dict for the store), so that what the client puts on the wire is
checked exactly: `received` on every chunk, no state asked for, the reopen
by id, the kept chunks the store already has skipped, the rest replayed,
those in flight sent again, FAILED_PRECONDITION (the lease) asked again
for up to `lease_wait`. Then against the real thing: three ssm_server
replicas sharing a real redis-server, pipelined sessions, one replica
drained and one SIGKILLed mid-run; every output reaches its caller once,
equal to Infer's, and the session id never changes. Last, a server
without a store still resumes from snapshots."""

import asyncio
import hashlib
import shutil
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

import ssmserve
import ssmserve.aio
from conftest import (WIRE_TOLERANCE, RedisServer, ServerGroup, local_server,
                      max_relative_diff, sequence)
from ssmserve._stubs import pb, rpc

# ---------------------------------------------------------------------------
# The protocol, against a stand-in
# ---------------------------------------------------------------------------


class StandIn(rpc.InferenceServicer):
    """A durable server of one model: y_t = x_1 + ... + x_t (the state is
    the running sum). The store keeps (position, sum) of a session, written
    only at a chunk boundary the client has confirmed with `received`, at
    least `every` steps after the last write, the way ssm_server does.

    fail_after: the first call answers that many chunks, then runs (but
    does not answer) `unanswered` more, then ends with UNAVAILABLE: the
    live state is ahead of what the client got. refusals: reopens by id
    refused with FAILED_PRECONDITION (the lease) before one is accepted."""

    def __init__(self, fail_after, unanswered=2, refusals=0, every=6):
        self.fail_after, self.unanswered, self.refusals, self.every = (
            fail_after, unanswered, refusals, every)
        self.store = {}
        self.calls = []  # the requests of each call
        self.reopened_at = []  # the position of each accepted reopen by id
        self.lock = threading.Lock()

    def StreamInfer(self, requests, context):
        reqs = []
        with self.lock:
            self.calls.append(reqs)
            first_call = len(self.calls) == 1
        it = iter(requests)
        first = next(it)
        reqs.append(first)
        o = first.open
        if o.session_id:
            with self.lock:
                refuse = self.refusals > 0
                self.refusals -= int(refuse)
            if refuse:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the lease is held")
            if o.session_id not in self.store:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
            sid = o.session_id
            position, total = self.store[sid]
            self.reopened_at.append(position)
        else:
            sid, position, total = "sid-1", 0, 0.0
        yield pb.StreamResponse(opened=pb.StreamOpened(
            session_id=sid, model="stand-in", version=1, batch=1, d_input=1, d_output=1,
            position=position, durable=True))
        history = {position: total}
        confirmed = position
        answered = run_unanswered = 0
        for r in it:
            reqs.append(r)
            start = position
            y = total + np.cumsum(np.asarray(r.chunk.values, np.float64))
            total, position = float(y[-1]), position + len(y)
            history[position] = total
            confirmed = max(confirmed, min(r.received if r.HasField("received") else start,
                                           start))
            stored = self.store.get(sid, (-1, 0.0))[0]
            best = max(p for p in history if p <= confirmed)
            if best - stored >= self.every or stored < 0:
                self.store[sid] = (best, history[best])
            if first_call and answered >= self.fail_after:
                run_unanswered += 1
                if run_unanswered >= self.unanswered:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the replica goes away")
                continue
            answered += 1
            yield pb.StreamResponse(output=pb.Tensor(shape=[1, len(y), 1], values=y),
                                    position=position,
                                    durable_position=self.store.get(sid, (-1, 0.0))[0])


@pytest.fixture
def stand_in():
    servers = []

    def start(**kwargs):
        impl = StandIn(**kwargs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rpc.add_InferenceServicer_to_server(impl, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return impl, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(None)


STAND_IN_POLICY = ssmserve.Resume(checkpoint_steps=4, max_attempts=3, backoff=0.01,
                                  connect_timeout=2.0, lease_wait=5.0)
# Small integers: the running sums are exact in float32.
STAND_IN_X = (np.arange(240) % 7).astype(np.float32)[:, None]


def check_wire(impl, length, refused):
    """What the client sent: the first call pipelined with `received` on
    every chunk, never asking for the state; `refused` reopens refused,
    then the reopen by id, which sends only the chunks after the store's
    position."""
    first, *others = impl.calls
    assert first[0].open.model == "stand-in" and not first[0].open.session_id
    assert len(others) == refused + 1
    for call in others:
        o = call[0].open
        assert o.session_id == "sid-1" and not o.HasField("resume_from"), o
    chunks = [r for call in impl.calls for r in call[1:]]
    assert all(r.HasField("received") for r in chunks)
    assert not any(r.want_state for r in chunks)
    # Pipelined: chunks were sent before the answers to those before them
    # were read, and said how far the client had read.
    start, behind = 0, 0
    for r in first[1:]:
        assert r.received <= start
        behind += r.received < start
        start += r.chunk.shape[1]
    assert behind > 0
    # The store was behind what the client had (the failure came with
    # chunks in flight); the reopened call starts at its position and goes
    # to the end: the chunks it had were not sent again.
    [at] = impl.reopened_at
    client_had = others[-1][1].received  # what the replay says
    assert 0 < at < client_had < start
    assert sum(r.chunk.shape[1] for r in others[-1][1:]) == length - at


def stand_in_client(module, address):
    return module.Client(address, timeout=10.0, token="", reconnect_backoff=0.05,
                         max_reconnect_backoff=0.2)


def test_a_durable_session_resumes_by_id_alone(stand_in):
    impl, address = stand_in(fail_after=20, refusals=2)
    with stand_in_client(ssmserve, address) as client:
        with client.session("stand-in", resume=STAND_IN_POLICY) as s:
            assert s.durable and s.session_id == "sid-1"
            y = s.run(STAND_IN_X, chunk=3, in_flight=4)
            assert s.resumes == 1 and s.session_id == "sid-1"
            assert s.position == len(STAND_IN_X)
    np.testing.assert_array_equal(y, np.cumsum(STAND_IN_X, axis=0))
    check_wire(impl, len(STAND_IN_X), refused=2)


def test_asyncio_a_durable_session_resumes_by_id_alone(stand_in):
    # Pipelined, the call ends with answers still unread; grpc.aio's write
    # into such a call waits for its status, which waits for those answers
    # to be read: a session that wrote inline, in the coroutine that also
    # reads, hung here (5 runs in 6).
    impl, address = stand_in(fail_after=20, refusals=2)

    async def main():
        async with stand_in_client(ssmserve.aio, address) as client:
            async with client.session("stand-in", resume=STAND_IN_POLICY) as s:
                assert s.durable and s.session_id == "sid-1"
                y = await s.run(STAND_IN_X, chunk=3, in_flight=4)
                assert s.resumes == 1 and s.session_id == "sid-1"
                return y

    np.testing.assert_array_equal(asyncio.run(main()), np.cumsum(STAND_IN_X, axis=0))
    check_wire(impl, len(STAND_IN_X), refused=2)


def test_lock_step_sessions_confirm_what_they_read(stand_in):
    # One chunk at a time: each chunk says the client has everything
    # before it; after the failure only what the store lacks is replayed.
    impl, address = stand_in(fail_after=30, unanswered=1)
    with stand_in_client(ssmserve, address) as client:
        with client.session("stand-in", resume=STAND_IN_POLICY) as s:
            got = [s.step(STAND_IN_X[t:t + 2]) for t in range(0, 120, 2)]
    np.testing.assert_array_equal(np.concatenate(got), np.cumsum(STAND_IN_X[:120], axis=0))
    start = 0
    for r in impl.calls[0][1:]:
        assert r.received == start
        start += r.chunk.shape[1]
    assert impl.reopened_at[0] >= 60 - 2 - impl.every


def test_reattaching_a_durable_session_asks_for_no_snapshot(stand_in):
    # The stand-in has no ExportState (UNIMPLEMENTED): a reattach with
    # resume that asked for the state would fail.
    impl, address = stand_in(fail_after=10**6)
    x = STAND_IN_X[:60]
    with stand_in_client(ssmserve, address) as client:
        s = client.session("stand-in", resume=STAND_IN_POLICY)
        head = s.run(x[:30], chunk=3)
        s.step(x[30:33])  # confirms the 30 before it
        sid = s.detach()
        stored, _ = impl.store[sid]
        with client.reattach(sid, resume=STAND_IN_POLICY) as again:
            assert again.durable and again.session_id == sid and again.position == stored
            tail = again.run(x[stored:], chunk=4)
    np.testing.assert_array_equal(np.concatenate([head, tail[30 - stored:]]),
                                  np.cumsum(x, axis=0))


def test_a_lease_that_stays_held_ends_the_wait(stand_in):
    impl, address = stand_in(fail_after=10, refusals=10**6)
    policy = ssmserve.Resume(max_attempts=2, backoff=0.01, connect_timeout=2.0, lease_wait=0.6)
    with stand_in_client(ssmserve, address) as client:
        s = client.session("stand-in", resume=policy)
        started = time.monotonic()
        with pytest.raises(ssmserve.FailedPrecondition, match="lease"):
            s.run(STAND_IN_X, chunk=3, in_flight=4)
        waited = time.monotonic() - started
    # Asked every 0.2 s for 0.6 s, then given up (not retried as if the
    # server were unreachable).
    assert 0.6 <= waited < 3.0, waited
    assert 3 <= len(impl.calls) - 1 <= 6


def test_resume_policy_checks_lease_wait():
    with pytest.raises(ssmserve.InvalidArgument, match="lease_wait"):
        ssmserve.Resume(lease_wait=-1)
    assert ssmserve.Resume().lease_wait == 20.0


def test_the_stubs_carry_received():
    r = pb.StreamRequest()
    assert not r.HasField("received")  # proto3 optional: absent is not 0
    r.received = 0
    assert r.HasField("received")


# ---------------------------------------------------------------------------
# The real thing: three replicas on one redis-server
# ---------------------------------------------------------------------------

needs_redis = pytest.mark.skipif(shutil.which(RedisServer.BINARY) is None,
                                 reason="needs redis-server (apt install redis-server)")

LEASE, CHECKPOINT = "2s", "500ms"
POLICY = ssmserve.Resume(max_attempts=8, backoff=0.02, connect_timeout=3.0, lease_wait=20.0)
# Chunk sizes a session cycles through (run() slices), pipelined 4 deep.
PATTERN = [1, 3, 2, 5, 7]
SLICE, IN_FLIGHT = 30, 4


def tag(session_id):
    """How the server's log names a session (server/echo.h)."""
    return "s-" + hashlib.sha256(session_id.encode()).hexdigest()[:12]


class DurableReplicas(ServerGroup):
    """Three ssm_server replicas on fixed ports (a restarted one comes back
    where clients look) sharing a redis-server."""

    def __init__(self, redis, count=3):
        self.redis = redis
        super().__init__([self._server(port=0) for _ in range(count)])
        self.logs = []  # those of the replicas restarted

    def _server(self, port):
        return local_server(flags=["--threads=1", "--drain_timeout=1s",
                                   f"--session_store={self.redis.url}", f"--session_lease={LEASE}",
                                   f"--session_checkpoint={CHECKPOINT}",
                                   "--session_store_timeout=500ms"], port=port)

    def restart(self, i):
        """A replica drained by SIGTERM (exit 0), started again on its port."""
        assert self.servers[i].stop() == 0, self.servers[i].log()
        self.logs.append(self.servers[i].log())
        self.servers[i] = self._server(port=self.servers[i].port).start()

    def all_logs(self):
        return "".join(self.logs) + "".join(s.log() for s in self.servers)

    def client(self, first, module=ssmserve):
        """A client whose channel lists the replicas from `first` on and
        takes the first that answers (pick_first): a session starts on
        replica `first` and moves to the next when it goes away."""
        n = len(self.servers)
        target = "ipv4:" + ",".join(self.servers[(first + k) % n].address for k in range(n))
        return module.Client(target, timeout=20.0, token="", reconnect_backoff=0.05,
                             max_reconnect_backoff=0.2)


class Gate:
    """How far sessions may run: the test raises the limit step by step,
    so that each fault lands while every session is streaming."""

    def __init__(self, limit):
        self.limit = limit
        self.cond = threading.Condition()

    def wait_below(self, position):
        with self.cond:
            assert self.cond.wait_for(lambda: position < self.limit, 60), "never let on"

    def raise_to(self, limit):
        with self.cond:
            self.limit = limit
            self.cond.notify_all()


def wait_for(what, timeout=60):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@needs_redis
def test_sessions_move_by_id_through_a_drain_and_a_kill():
    # Stream i starts on replica i % 3. Replica 1 is drained (its sessions
    # move to replica 2) and started again, then replica 0 is SIGKILLed
    # (its sessions wait out the lease, then move to replica 1). Replica
    # 2's own sessions never notice.
    n, length = 9, 1500
    phases = [300, 900, length]  # the drain at the first limit, the kill at the second
    with RedisServer() as redis, DurableReplicas(redis) as replicas:
        clients = [replicas.client(first) for first in range(3)]
        gate = Gate(phases[0])
        progress = [0] * n
        results, errors_, ids = [None] * n, [None] * n, [None] * n

        def stream(i):
            x = sequence(length, seed=500 + i)
            try:
                with clients[i % 3].session("s4-demo", resume=POLICY) as s:
                    assert s.durable
                    ids[i] = [s.session_id]
                    parts, t, k = [], 0, 0
                    while t < length:
                        gate.wait_below(t)
                        t1 = min(t + SLICE, length)
                        parts.append(s.run(x[t:t1], chunk=PATTERN[k % len(PATTERN)],
                                           in_flight=IN_FLIGHT))
                        t, k = t1, k + 1
                        progress[i] = s.position
                        ids[i].append(s.session_id)
                    results[i] = (x, np.concatenate(parts), s.resumes)
            except Exception as e:  # noqa: BLE001 - reported below
                errors_[i] = e

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        wait_for(lambda: min(progress) >= phases[0] or any(errors_))
        assert not any(errors_), errors_
        gate.raise_to(phases[1])
        time.sleep(0.05)  # every session streaming again
        at_drain = list(progress)
        replicas.restart(1)
        wait_for(lambda: min(progress) >= phases[1] or any(errors_))
        assert not any(errors_), errors_
        gate.raise_to(phases[2])
        time.sleep(0.05)
        at_kill = list(progress)
        replicas.servers[0].kill()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert not any(errors_), errors_

        log = replicas.all_logs()
        for i, (x, y, resumes) in enumerate(results):
            # The same session throughout, every output once and Infer's.
            assert set(ids[i]) == {ids[i][0]}, i
            assert y.shape[0] == length
            want = clients[2].infer("s4-demo", x)
            assert max_relative_diff(y, want) <= WIRE_TOLERANCE, i
            moved = i % 3 != 2
            assert resumes == int(moved), (i, resumes)
            # Moved by the store, not by a snapshot.
            assert (f"session {tag(ids[i][0])} taken over from the session store" in log) == moved
            assert "opened from a snapshot" not in log
        print(f"drain at {at_drain}, kill at {at_kill}")
        for c in clients:
            c.close()


@needs_redis
def test_asyncio_sessions_move_by_id():
    n, length, kill_at = 3, 900, 300

    async def main(replicas):
        clients = [replicas.client(first, ssmserve.aio) for first in range(3)]
        progress = [0] * n

        async def stream(i):
            x = sequence(length, seed=700 + i)
            parts = []
            async with clients[i].session("s4-demo", resume=POLICY) as s:
                assert s.durable
                sid = s.session_id
                for k, t in enumerate(range(0, length, SLICE)):
                    parts.append(await s.run(x[t:t + SLICE], chunk=PATTERN[k % len(PATTERN)],
                                             in_flight=IN_FLIGHT))
                    progress[i] = s.position
                    await asyncio.sleep(0.005)
                assert s.session_id == sid
                return x, np.concatenate(parts), s.resumes

        tasks = [asyncio.create_task(stream(i)) for i in range(n)]
        while min(progress) < kill_at:
            await asyncio.sleep(0.01)
            for t in tasks:
                if t.done():
                    t.result()
        replicas.servers[0].kill()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        for i, (x, y, resumes) in enumerate(results):
            assert resumes == int(i == 0), (i, resumes)
            want = await clients[1].infer("s4-demo", x)
            assert max_relative_diff(y, want) <= WIRE_TOLERANCE, i
        for c in clients:
            await c.close()

    with RedisServer() as redis, DurableReplicas(redis) as replicas:
        asyncio.run(main(replicas))


# ---------------------------------------------------------------------------
# Without a store: snapshots, as before
# ---------------------------------------------------------------------------


def test_without_a_store_sessions_resume_from_snapshots():
    # Killed mid-run with chunks in flight and started again on the same
    # port: the session comes back from its latest snapshot (a new id).
    policy = ssmserve.Resume(checkpoint_steps=32, max_attempts=8, backoff=0.02,
                             connect_timeout=3.0)
    length = 3000
    x = sequence(length, seed=11)
    first = local_server().start()
    second = None
    try:
        with ssmserve.Client(first.address, timeout=10.0, reconnect_backoff=0.05,
                             max_reconnect_backoff=0.2, token="") as client:
            want = client.infer("s4-demo", x)
            s = client.session("s4-demo", resume=policy)
            assert not s.durable
            before = s.session_id
            out = {}

            def run():
                try:
                    out["y"] = s.run(x, chunk=5, in_flight=4)
                except Exception as e:  # noqa: BLE001
                    out["error"] = e

            runner = threading.Thread(target=run, daemon=True)
            runner.start()
            wait_for(lambda: s.position >= 500 or not runner.is_alive())
            at_kill = s.position
            first.kill()
            second = local_server(port=first.port).start()
            runner.join(60)
            assert "error" not in out, out.get("error")
            assert 500 <= at_kill < length
            assert s.resumes == 1 and s.session_id != before and not s.durable
            assert max_relative_diff(out["y"], want) <= WIRE_TOLERANCE
            assert "opened from a snapshot" in second.log()
            s.close()
    finally:
        first.kill()
        if second is not None:
            second.kill()
