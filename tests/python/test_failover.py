"""Failover from Python: three ssm_server replicas behind one round_robin
channel (`ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, what a headless
Service gives a client in Kubernetes), resumable sessions streaming on
them, and the replica holding the most sessions SIGKILLed mid-stream.

Every session must end with Infer's outputs over its whole input (each step
delivered once: a lost or repeated step shifts the sequence far above the
float32 tolerance); the sessions of the killed replica must have moved to
a survivor from their last snapshot (one resume, a new session id), the
others must not have noticed. The same for the asyncio client, on fewer
sessions. (tests/e2e/replicas_test.cc does this with the C++ client.)"""

import asyncio
import threading
import time

import numpy as np

import ssmserve
import ssmserve.aio
from conftest import WIRE_TOLERANCE, ServerGroup, local_server, max_relative_diff, sequence

REPLICAS = 3
# Recurrent chunks of several sizes and one long enough (>= 64 steps) to
# run as a convolution from the carried state.
PATTERN = [3, 8, 5, 70, 1, 13]
LENGTH, PAUSE_AT = 600, 200
PACE = 0.008  # seconds between chunks after the pause: still running at the kill
POLICY = ssmserve.Resume(checkpoint_steps=32, max_attempts=8, backoff=0.02, connect_timeout=3.0)


class Replicas(ServerGroup):
    def __init__(self):
        # One worker thread each: three servers and the test share two cores.
        super().__init__([local_server(flags=["--threads=1", "--drain_timeout=1s"])
                          for _ in range(REPLICAS)])

    def target(self):
        return "ipv4:" + ",".join(s.address for s in self.servers)

    def client(self, module=ssmserve):
        return module.Client(self.target(), load_balancing="round_robin", timeout=20.0,
                             reconnect_backoff=0.05, max_reconnect_backoff=0.2, token="")

    def holders(self, session_ids):
        """Which replica holds each session (-1: none), asked of each directly."""
        found = [-1] * len(session_ids)
        for r, server in enumerate(self.servers):
            if not server.running():
                continue
            with ssmserve.Client(server.address, timeout=5.0, token="") as direct:
                for i, sid in enumerate(session_ids):
                    try:
                        direct.export_state(sid)
                        found[i] = r
                    except ssmserve.NotFound:
                        pass
        return found

    def kill_busiest(self, session_ids):
        holders = self.holders(session_ids)
        assert -1 not in holders, f"a paused session is on no replica: {holders}"
        held = [holders.count(r) for r in range(REPLICAS)]
        victim = int(np.argmax(held))
        assert held[victim] < len(session_ids), f"all sessions on one replica: {held}"
        return holders, held, victim


def model_of(i):
    return "s4-demo" if i % 2 else "legt-delay"


class Stream(threading.Thread):
    """One resumable session on its own thread: chunks of PATTERN until
    PAUSE_AT, a wait for `go`, then paced chunks to the end."""

    def __init__(self, i, client, go, paused):
        super().__init__(daemon=True)
        self.model, self.x = model_of(i), sequence(LENGTH, seed=200 + i)
        self.client, self.go, self.paused = client, go, paused
        self.outputs, self.session_ids, self.error = [], [], None
        self.position, self.resumes, self.current = 0, 0, ""

    def run(self):
        try:
            with self.client.session(self.model, resume=POLICY) as s:
                self._note(s)
                t, k, waited = 0, 0, False
                while t < LENGTH:
                    if t >= PAUSE_AT and not waited:
                        self.paused.release()
                        assert self.go.wait(30), "never told to go on"
                        waited = True
                    steps = min(PATTERN[k % len(PATTERN)], LENGTH - t)
                    self.outputs.append(s.step(self.x[t:t + steps]))
                    t, k = t + steps, k + 1
                    self.position = t
                    self._note(s)
                    if waited:
                        time.sleep(PACE)
                self.resumes = s.resumes
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _note(self, s):
        if not self.session_ids or self.session_ids[-1] != s.session_id:
            self.session_ids.append(s.session_id)
        self.current = s.session_id


def test_kill_the_busiest_replica_mid_stream():
    streams_n = 9
    with Replicas() as replicas, replicas.client() as client:
        client.wait_ready(10)
        # Let round_robin connect to all three first, so sessions spread.
        for _ in range(2 * REPLICAS):
            client.models()
        go, paused = threading.Event(), threading.Semaphore(0)
        streams = [Stream(i, client, go, paused) for i in range(streams_n)]
        for s in streams:
            s.start()
        for _ in streams:
            assert paused.acquire(timeout=30), [s.error for s in streams]
        holders, held, victim = replicas.kill_busiest([s.current for s in streams])

        go.set()
        time.sleep(0.02)  # every stream under way again
        at_kill = [s.position for s in streams]
        replicas.servers[victim].kill()
        killed = time.monotonic()
        for s in streams:
            s.join(30)
        took = time.monotonic() - killed

        moved = 0
        for i, s in enumerate(streams):
            assert not s.is_alive(), f"stream {i} still running"
            assert s.error is None, f"stream {i} ({s.model}): {s.error!r}"
            assert at_kill[i] < LENGTH, f"stream {i} finished before the kill"
            if holders[i] == victim:
                moved += 1
                assert s.resumes == 1 and len(s.session_ids) == 2, (i, s.session_ids)
            else:
                assert s.resumes == 0 and len(s.session_ids) == 1, (i, s.session_ids)
            y = np.concatenate(s.outputs)
            assert y.shape[0] == LENGTH
            assert max_relative_diff(y, client.infer(s.model, s.x)) <= WIRE_TOLERANCE, i
        assert moved == held[victim] > 0
        print(f"sessions per replica {held}; killed replica {victim}; {moved} moved; "
              f"all done {took:.2f} s after the kill")


def test_asyncio_sessions_move_too():
    sessions_n = 6

    async def stream(client, i, go, paused, out):
        x = sequence(LENGTH, seed=300 + i)
        parts = []
        async with client.session(model_of(i), resume=POLICY) as s:
            out["ids"][i] = [s.session_id]
            t, k = 0, 0
            while t < LENGTH:
                if t == PAUSE_AT or (t > PAUSE_AT and not go.is_set()):
                    paused.append(i)
                    await go.wait()
                steps = min(PATTERN[k % len(PATTERN)], LENGTH - t)
                if t < PAUSE_AT < t + steps:
                    steps = PAUSE_AT - t  # land exactly on the pause
                parts.append(await s.step(x[t:t + steps]))
                t, k = t + steps, k + 1
                if s.session_id != out["ids"][i][-1]:
                    out["ids"][i].append(s.session_id)
                if go.is_set():
                    await asyncio.sleep(PACE)
            out["resumes"][i] = s.resumes
        return x, np.concatenate(parts)

    async def main(replicas):
        async with replicas.client(ssmserve.aio) as client:
            await client.wait_ready(10)
            for _ in range(2 * REPLICAS):
                await client.models()
            go, paused = asyncio.Event(), []
            out = {"ids": {}, "resumes": {}}
            tasks = [asyncio.create_task(stream(client, i, go, paused, out))
                     for i in range(sessions_n)]
            while len(paused) < sessions_n:
                await asyncio.sleep(0.01)
                for t in tasks:
                    if t.done():
                        t.result()  # raises a stream's error
            current = [out["ids"][i][-1] for i in range(sessions_n)]
            holders, held, victim = await asyncio.to_thread(replicas.kill_busiest, current)
            go.set()
            await asyncio.sleep(0.02)
            replicas.servers[victim].kill()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            for i, (x, y) in enumerate(results):
                moved = holders[i] == victim
                assert out["resumes"][i] == int(moved), (i, holders, victim)
                assert len(out["ids"][i]) == 1 + int(moved)
                assert y.shape[0] == LENGTH
                want = await client.infer(model_of(i), x)
                assert max_relative_diff(y, want) <= WIRE_TOLERANCE, i
            return held[victim]

    with Replicas() as replicas:
        assert asyncio.run(main(replicas)) > 0


def test_a_restarted_server_takes_the_session_back_without_a_snapshot():
    # checkpoint_steps beyond the run: no snapshot is ever taken, so the
    # session comes back as a new one of the same version with every chunk
    # replayed. Then the server goes for good: the error comes, bounded.
    policy = ssmserve.Resume(checkpoint_steps=10_000, max_attempts=2, backoff=0.05,
                             connect_timeout=1.0)
    x = sequence(300, seed=9)
    first = local_server().start()
    try:
        with ssmserve.Client(first.address, timeout=10.0, reconnect_backoff=0.05,
                             max_reconnect_backoff=0.2, token="") as client:
            want = client.infer("s4-demo", x)
            s = client.session("s4-demo", resume=policy)
            head = s.run(x[:120], chunk=9)
            before = s.session_id
            first.kill()
            second = local_server(port=first.port).start()
            try:
                tail = s.run(x[120:200], chunk=16)
                assert s.resumes == 1 and s.session_id != before and s.position == 200
                got = np.concatenate([head, tail])
                assert max_relative_diff(got, want[:200]) <= WIRE_TOLERANCE
            finally:
                second.kill()
            started = time.monotonic()
            try:
                s.step(x[200])
                raise AssertionError("a step without any server succeeded")
            except ssmserve.Unavailable:
                pass
            # Two attempts: backoffs 0.05 + 0.1 s, each waiting up to 1 s.
            assert time.monotonic() - started < 5
    finally:
        first.kill()
