"""The package's security options against the real ssm_server: TLS (the
CA, the server's name), client certificates (mTLS), bearer tokens (argument
and SSM_TOKEN), the server's exact codes without them, signed snapshots
through sessions, imports and files (shared with ssm_client's), a
resumable session moving to a restarted server, the asyncio client, and
client/python/ssm_example.py with --ca/--cert/--key/--token.

Certificates come from tests/e2e/make_test_pki.sh (openssl), made once
per module; one server has everything on: --tls_cert/--tls_key,
--tls_client_ca with --tls_client_auth=request, --auth_callers,
--snapshot_keys and a plaintext --health_address."""

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ssmserve
import ssmserve.aio
from conftest import (PACKAGE_DIR, ROOT, WIRE_TOLERANCE, client_bin, local_server,
                      max_relative_diff, sequence)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

ALICE = "alice-py-s3cret"   # every scope
BOB = "bob-py-s3cret"       # run:legt-* only
KEY = "00ff" * 16


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    subprocess.run([str(ROOT / "tests" / "e2e" / "make_test_pki.sh"), str(d)], check=True,
                   capture_output=True)
    sha = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    (d / "callers.json").write_text(json.dumps({"callers": [
        {"principal": "alice", "token_sha256": [sha(ALICE)],
         "scopes": ["run:*", "list", "state", "math"]},
        {"principal": "bob", "token_sha256": [sha(BOB)], "scopes": ["run:legt-*"]},
        {"principal": "svc-a", "cert_san": ["client-a.test"], "scopes": ["run:*", "list", "state"]},
    ]}))
    (d / "keys").write_text(KEY + "\n")
    return d


def secure_flags(pki, health_port):
    return [f"--tls_cert={pki / 'server.pem'}", f"--tls_key={pki / 'server.key'}",
            f"--tls_client_ca={pki / 'ca.pem'}", "--tls_client_auth=request",
            f"--auth_callers={pki / 'callers.json'}", f"--snapshot_keys={pki / 'keys'}",
            f"--health_address=127.0.0.1:{health_port}"]


@pytest.fixture(scope="module")
def secure(pki):
    """The server, and its health port. LocalServer's readiness probe goes
    over TLS, as nobody (an UNAUTHENTICATED answer means it is up)."""
    health = ssmserve.free_port()
    with local_server(secure_flags(pki, health), client_options={"ca": pki / "ca.pem"}) as s:
        yield s, health


def tls_client(server, pki, **kwargs):
    kwargs.setdefault("token", ALICE)
    return ssmserve.Client(server.address, ca=pki / "ca.pem", timeout=20.0, **kwargs)


def test_every_call_over_tls_with_a_token(secure, pki):
    server, _ = secure
    with tls_client(server, pki) as c:
        assert {m.name for m in c.models()} >= {"legt-delay", "s4-demo"}
        assert c.model("s4-demo").d_input == 1
        x = sequence(40)
        y, snap = c.infer("s4-demo", x, return_state=True)
        assert len(snap.signature) == 32 and snap.position == 40
        with c.session("s4-demo") as s:
            head = np.concatenate([s.step(x[0:1]), s.run(x[1:25], chunk=6)])
            state = s.state()
        assert len(state.signature) == 32 and state.position == 25
        # A signed snapshot continues in a new session and through an import.
        with c.resume(state) as s:
            tail = s.run(x[25:], chunk=5)
        assert max_relative_diff(np.concatenate([head, tail]), y) <= WIRE_TOLERANCE
        session_id = c.import_state(state)
        assert len(c.export_state(session_id).signature) == 32
        with c.reattach(session_id) as s:
            assert s.position == 25
        assert c.hippo("legs", n=3).A.shape == (3, 3)
        assert c.kernel(8, init="s4d-lin", n=4).shape == (1, 8)


def test_missing_or_wrong_tokens_get_the_servers_codes(secure, pki, monkeypatch):
    server, _ = secure
    monkeypatch.delenv("SSM_TOKEN", raising=False)
    for token in ("", "a-guessed-token"):
        with tls_client(server, pki, token=token) as c:
            for call in (c.models, lambda: c.infer("legt-delay", sequence(4)),
                         lambda: c.hippo("legs", n=2), lambda: c.session("legt-delay")):
                with pytest.raises(ssmserve.Unauthenticated) as e:
                    call()
                assert e.value.code.name == "UNAUTHENTICATED"
                assert "a-guessed-token" not in e.value.message
    with tls_client(server, pki, token=BOB) as c:
        assert c.infer("legt-delay", sequence(4)).shape[0] == 4
        with pytest.raises(ssmserve.PermissionDenied, match="run:s4-demo") as e:
            c.infer("s4-demo", sequence(4))
        assert BOB not in e.value.message
        with pytest.raises(ssmserve.PermissionDenied):
            c.session("s4-demo")
        with pytest.raises(ssmserve.PermissionDenied):
            c.models()
    # The token from the environment.
    monkeypatch.setenv("SSM_TOKEN", ALICE)
    with ssmserve.Client(server.address, ca=pki / "ca.pem", timeout=20.0) as c:
        assert c.models()


def test_client_certificates_and_server_verification(secure, pki):
    server, _ = secure
    mtls = dict(cert=pki / "client.pem", key=pki / "client.key", token="")
    with tls_client(server, pki, **mtls) as c:            # svc-a, by its certificate
        assert c.models()
        with c.session("legt-delay") as s:
            assert s.step(np.array([0.5], np.float32)).ndim == 1
        with pytest.raises(ssmserve.PermissionDenied, match="math"):
            c.hippo("legs", n=2)
    with tls_client(server, pki, cert=(pki / "client-b.pem").read_bytes(),
                    key=(pki / "client-b.key").read_bytes(), token="") as c:
        with pytest.raises(ssmserve.Unauthenticated, match="client-b.test"):
            c.models()
    with tls_client(server, pki, server_name="localhost") as c:
        assert c.models()
    # Refused handshakes: another CA, a name the certificate lacks, plaintext.
    for kwargs in ({"ca": pki / "other-ca.pem"}, {"ca": pki / "ca.pem", "server_name": "x.test"},
                   {}):
        with ssmserve.Client(server.address, timeout=3.0, token=ALICE, **kwargs) as c:
            with pytest.raises(ssmserve.Unavailable):
                c.models()


def test_health_port_is_plaintext_and_health_only(secure):
    server, health = secure
    with ssmserve.Client(f"127.0.0.1:{health}", timeout=5.0, token="") as c:
        with pytest.raises(ssmserve.Unimplemented, match="grpc.health.v1.Health only"):
            c.models()
    run = subprocess.run([client_bin(), f"--address=127.0.0.1:{health}", "health"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout == "SERVING\n", run.stderr


def test_signed_state_files_are_shared_with_ssm_client(secure, pki, tmp_path):
    """Python writes, ssm_client resumes; ssm_client writes, Python resumes."""
    server, _ = secure
    x = sequence(30, seed=3)
    with tls_client(server, pki) as c:
        want = c.infer("legt-delay", x)
        with c.session("legt-delay") as s:
            head = s.run(x[:10], chunk=4)
            s.state().save(tmp_path / "py.state")
        raw = (tmp_path / "py.state").read_bytes()
        assert raw[:1] == b"\x0a" and b"SSMSNAP\0" in raw  # the message, signed
        loaded = ssmserve.Snapshot.load(tmp_path / "py.state")
        assert len(loaded.signature) == 32 and loaded.position == 10
        np.savetxt(tmp_path / "mid.csv", x[10:20], delimiter=",")
        cli = [client_bin(), f"--address={server.address}", f"--ca={pki / 'ca.pem'}"]
        run = subprocess.run(cli + ["stream", "--model=legt-delay", "--chunk=3",
                                    f"--input={tmp_path / 'mid.csv'}",
                                    f"--resume_state={tmp_path / 'py.state'}",
                                    f"--output={tmp_path / 'mid.npy'}",
                                    f"--save_state={tmp_path / 'cli.state'}"],
                             capture_output=True, text=True, timeout=60,
                             env={"SSM_TOKEN": ALICE, "PATH": "/usr/bin:/bin"})
        assert run.returncode == 0, run.stderr
        assert ALICE not in run.stdout + run.stderr
        mid = np.load(tmp_path / "mid.npy")[0]
        with c.resume(ssmserve.Snapshot.load(tmp_path / "cli.state")) as s:
            tail = s.run(x[20:], chunk=7)
        # The bytes themselves are accepted too (what from_bytes reads).
        with c.resume((tmp_path / "cli.state").read_bytes()) as s:
            assert s.position == 20
    got = np.concatenate([head, mid, tail])
    assert max_relative_diff(got, want) <= WIRE_TOLERANCE
    # An unsigned snapshot's bytes are its data, as before.
    plain = ssmserve.Snapshot(data=loaded.data)
    assert bytes(plain) == loaded.data
    assert ssmserve.Snapshot.from_bytes(bytes(loaded)) == loaded


def test_a_resumable_session_moves_to_a_restarted_server(pki):
    health = ssmserve.free_port()
    probe = {"ca": pki / "ca.pem"}
    server = local_server(secure_flags(pki, health), client_options=probe).start()
    restarted = []
    x = sequence(120, seed=9)
    try:
        with tls_client(server, pki, reconnect_backoff=0.05, max_reconnect_backoff=0.2) as c:
            want = c.infer("legt-delay", x)
            policy = ssmserve.Resume(checkpoint_steps=25, max_attempts=8, backoff=0.1,
                                     connect_timeout=4.0)
            with c.session("legt-delay", resume=policy) as s:
                head = s.run(x[:60], chunk=6)
                server.kill()
                # The session goes on at once and retries; the server comes
                # back half a second later. It is started from this thread:
                # LocalServer's server dies with the thread that started it.
                tail = {}

                def feed():
                    try:
                        tail["y"] = s.run(x[60:], chunk=6)
                    except Exception as e:  # noqa: BLE001 - raised below, in the test
                        tail["error"] = e

                feeder = threading.Thread(target=feed)
                feeder.start()
                time.sleep(0.5)
                restarted.append(local_server(secure_flags(pki, health), port=server.port,
                                              client_options=probe))
                restarted[0].start()
                feeder.join()
                if "error" in tail:
                    raise tail["error"]
                assert s.resumes >= 1
                tail = tail["y"]
        assert max_relative_diff(np.concatenate([head, tail]), want) <= WIRE_TOLERANCE
        assert "opened from a snapshot" in restarted[0].log()
    finally:
        server.kill()
        for r in restarted:
            r.stop()


def test_asyncio_client_has_the_same_options(secure, pki, monkeypatch):
    server, _ = secure
    monkeypatch.setenv("SSM_TOKEN", ALICE)

    async def main():
        async with ssmserve.aio.Client(server.address, ca=pki / "ca.pem", timeout=20.0) as c:
            assert await c.models()
            async with c.session("legt-delay") as s:
                await s.step(np.array([0.5], np.float32))
                state = await s.state()
            assert len(state.signature) == 32
            async with c.resume(state) as s:
                assert s.position == 1
            assert (await c.hippo("legs", n=2)).A.shape == (2, 2)
        async with ssmserve.aio.Client(server.address, ca=pki / "ca.pem", timeout=20.0,
                                       token="") as c:
            with pytest.raises(ssmserve.Unauthenticated):
                await c.models()
        async with ssmserve.aio.Client(server.address, ca=pki / "ca.pem", cert=pki / "client.pem",
                                       key=pki / "client.key", token="", timeout=20.0) as c:
            assert await c.models()

    asyncio.run(main())


def test_example_takes_the_security_options(secure, pki):
    server, _ = secure
    example = [sys.executable, str(PACKAGE_DIR / "ssm_example.py"), f"--address={server.address}",
               f"--ca={pki / 'ca.pem'}"]
    for extra in ([f"--token={ALICE}"],
                  [f"--cert={pki / 'client.pem'}", f"--key={pki / 'client.key'}", "--token="]):
        run = subprocess.run(example + extra, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "-> match" in run.stdout
    run = subprocess.run(example + ["--token="], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "UNAUTHENTICATED" in run.stderr
