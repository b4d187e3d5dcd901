"""ssmserve.Client against the real ssm_server: models, infer, sessions,
snapshots, the Math service, and every error as its own exception class
with the server's code and message."""

import socket

import grpc
import numpy as np
import pytest

import ssmserve
from conftest import WIRE_TOLERANCE, local_server, max_relative_diff, sequence


def test_models_and_model(client):
    names = {m.name: m for m in client.models()}
    assert {"legt-delay", "legs-memory", "s4-demo"} <= set(names)
    assert names["s4-demo"].versions == [1] and names["s4-demo"].ready

    info = client.model("legt-delay")
    assert (info.name, info.version, info.d_input, info.d_output) == ("legt-delay", 1, 1, 3)
    assert info.kind == "hippo" and info.streamable
    assert info.config.hippo.window == 64
    assert list(info.config.hippo.delays) == [16, 32, 63.5]
    s4 = client.model("s4-demo", version=1)
    assert s4.kind == "s4" and s4.config.s4.d_model == 64 and s4.state_bytes > 0

    with pytest.raises(ssmserve.NotFound) as e:
        client.model("no-such-model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in e.value.message
    with pytest.raises(ssmserve.NotFound, match="has no version 7"):
        client.model("s4-demo", version=7)


def test_infer_takes_and_gives_numpy(client):
    x = sequence(200)
    y = client.infer("s4-demo", x)
    assert y.shape == (200, 1) and y.dtype == np.float32
    # A batch is the rows run separately; any float dtype or list goes in.
    xb = np.stack([x, sequence(200, seed=2)])
    yb = client.infer("s4-demo", xb.astype(np.float64))
    assert yb.shape == (2, 200, 1)
    assert max_relative_diff(yb[0], y) <= WIRE_TOLERANCE
    assert max_relative_diff(yb[1], client.infer("s4-demo", xb[1].tolist())) <= WIRE_TOLERANCE


def test_legt_delay_reads_the_input_back(client):
    # legt-delay's first output is the input 16 steps back (a smooth signal:
    # the LegT window of 64 steps with N = 32 holds it to ~1e-3).
    t = np.arange(400)
    x = np.sin(2 * np.pi * t / 150)[:, None]
    y = client.infer("legt-delay", x)
    assert np.max(np.abs(y[100:, 0] - x[100 - 16:400 - 16, 0])) < 2e-3


def test_bad_inputs_raise_invalid_argument(client):
    with pytest.raises(ssmserve.InvalidArgument, match=r"\[L, d\] or \[batch, L, d\]") as e:
        client.infer("s4-demo", np.zeros(10))  # refused before any call
    assert isinstance(e.value, ValueError)
    with pytest.raises(ssmserve.InvalidArgument, match=r"input.shape\[2\] = 2"):
        client.infer("s4-demo", np.zeros((10, 2)))
    x = sequence(20)
    x[5, 0] = np.nan
    with pytest.raises(ssmserve.InvalidArgument, match=r"input.values\[5\] is NaN"):
        client.infer("s4-demo", x)
    with pytest.raises(ssmserve.InvalidArgument, match="max_length 16384"):
        client.infer("s4-demo", np.zeros((16385, 1)))


def test_session_outputs_equal_infer_for_any_chunking(client):
    x = sequence(400)
    want = client.infer("s4-demo", x)
    parts = []
    with client.session("s4-demo") as s:
        assert (s.model, s.version, s.batch, s.d_input, s.d_output) == ("s4-demo", 1, 1, 1, 1)
        for t in range(10):                           # one step: [d] -> [d_output]
            y = s.step(x[t])
            assert y.shape == (1,)
            parts.append(y[None])
        parts.append(s.step(x[10:13]))                # [T, d] -> [T, d_output]
        parts.append(s.step(x[None, 13:20])[0])       # [1, T, d]
        parts.append(s.run(x[20:300], chunk=7, in_flight=3))  # recurrent steps
        parts.append(s.run(x[300:], chunk=70))        # a convolution from the state
        assert s.position == 400
    assert max_relative_diff(np.concatenate(parts), want) <= WIRE_TOLERANCE


def test_batch_session(client):
    x = sequence(150, batch=3)
    want = client.infer("legt-delay", x)
    with client.session("legt-delay", batch=3) as s:
        head = s.step(x[:, :50])
        tail = s.run(x[:, 50:], chunk=33)
        with pytest.raises(ssmserve.InvalidArgument, match=r"batch 3, d_input 1"):
            s.step(x[0, :5])  # a batch-1 chunk; refused before sending
    assert max_relative_diff(np.concatenate([head, tail], axis=1), want) <= WIRE_TOLERANCE


def test_state_resume_and_snapshot_files(client, tmp_path):
    x = sequence(300)
    want = client.infer("s4-demo", x)
    with client.session("s4-demo") as s:
        s.run(x[:120], chunk=16)
        snapshot = s.state()
        _, at_130 = s.step(x[120:130], want_state=True)
    assert (snapshot.model, snapshot.version, snapshot.position, snapshot.batch) == (
        "s4-demo", 1, 120, 1)
    assert at_130.position == 130

    with client.resume(snapshot) as s:
        assert s.position == 120
        assert max_relative_diff(s.run(x[120:]), want[120:]) <= WIRE_TOLERANCE
    # The bytes alone (what ssm_client --save_state writes) need the model named.
    path = tmp_path / "state.bin"
    at_130.save(path)
    with client.resume(ssmserve.Snapshot.load(path), model="s4-demo") as s:
        assert max_relative_diff(s.run(x[130:]), want[130:]) <= WIRE_TOLERANCE
    # Infer hands over to a session too.
    _, after = client.infer("s4-demo", x[:200], return_state=True)
    with client.resume(after) as s:
        assert max_relative_diff(s.step(x[200:]), want[200:]) <= WIRE_TOLERANCE


def test_snapshot_errors(client):
    with client.session("legt-delay") as s:
        s.run(sequence(30))
        snapshot = s.state()
    with pytest.raises(ssmserve.FailedPrecondition, match="belongs to model 'legt-delay'"):
        client.resume(snapshot, model="s4-demo")
    corrupted = bytearray(snapshot.data)
    corrupted[len(corrupted) // 2] ^= 1
    with pytest.raises(ssmserve.DataLoss, match="checksum mismatch"):
        client.resume(bytes(corrupted), model="legt-delay")
    with pytest.raises(ssmserve.InvalidArgument, match="a Snapshot or its bytes"):
        client.resume(42)


def test_detach_reattach_export_import(client):
    x = sequence(200)
    want = client.infer("s4-demo", x)
    s = client.session("s4-demo")
    first = s.run(x[:50])
    session_id = s.detach()
    with client.reattach(session_id) as again:
        assert again.session_id == session_id and again.position == 50
        second = again.run(x[50:100])
        exported = client.export_state(session_id)
        assert exported.position == 100
        new_id = client.import_state(exported)
        assert new_id != session_id
    with client.reattach(new_id, resume=True) as copy:
        assert copy.position == 100
        third = copy.run(x[100:])
    got = np.concatenate([first, second, third])
    assert max_relative_diff(got, want) <= WIRE_TOLERANCE
    # The clean close ended the session: it is gone.
    with pytest.raises(ssmserve.NotFound):
        client.reattach(session_id)
    with pytest.raises(ssmserve.NotFound):
        client.export_state("no-such-session")


def test_a_bad_chunk_leaves_the_session_to_reattach(client):
    x = sequence(60)
    want = client.infer("legt-delay", x)
    s = client.session("legt-delay")
    head = s.run(x[:40])
    bad = x[40:45].copy()
    bad[2, 0] = np.inf
    with pytest.raises(ssmserve.InvalidArgument, match="Inf"):
        s.step(bad)
    with pytest.raises(ssmserve.FailedPrecondition, match="closed"):
        s.step(x[40])
    with client.reattach(s.session_id) as again:
        assert again.position == 40  # the bad chunk changed nothing
        tail = again.run(x[40:])
    assert max_relative_diff(np.concatenate([head, tail]), want) <= WIRE_TOLERANCE


def test_hippo(client):
    n, dt = 6, 0.05
    h = client.hippo("legs", n, dt)
    i, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    legs = np.where(i > k, -np.sqrt((2 * i + 1) * (2 * k + 1)), 0.0) - np.diag(np.arange(1, n + 1))
    assert np.allclose(h.A, legs, rtol=0, atol=1e-12)
    assert np.allclose(h.B[:, 0], np.sqrt(2 * np.arange(n) + 1), rtol=0, atol=1e-12)
    eye = np.eye(n)
    bilinear = np.linalg.solve(eye - dt / 2 * h.A, eye + dt / 2 * h.A)
    assert np.allclose(h.A_bar, bilinear, rtol=0, atol=1e-12)
    euler = client.hippo("legs", n, dt, alpha=0.0)
    assert np.allclose(euler.A_bar, eye + dt * h.A, rtol=0, atol=1e-12)
    assert client.hippo("lmu", 4, 1.0, theta=64, discretization="zoh").A.shape == (4, 4)
    with pytest.raises(ssmserve.InvalidArgument, match=r"n must be in \[1, 1024\], got 0"):
        client.hippo("legs", 0)
    with pytest.raises(ssmserve.InvalidArgument, match="measure must be one of"):
        client.hippo("legx", 4)


def test_kernel(client):
    diag = client.kernel(300, init="s4d-lin", n=16, channels=3, method="diagonal", seed=3)
    naive = client.kernel(300, init="s4d-lin", n=16, channels=3, method="naive", seed=3)
    assert diag.shape == (3, 300) and diag.dtype == np.float64
    assert max_relative_diff(diag, naive) <= 1e-9
    dplr = client.kernel(257, init="s4", measure="legs", n=16, channels=2, method="dplr")
    assert max_relative_diff(dplr, client.kernel(257, init="s4", n=16, channels=2,
                                                 method="naive")) <= 1e-9
    with pytest.raises(ssmserve.ResourceExhausted, match="max_unary_length"):
        client.kernel(10_000_000, init="s4d-lin", n=8)


def test_kernel_of_an_explicit_system(client):
    # A diagonal system by hand and its bilinear kernel in NumPy:
    # K[l] = 2 Re sum_n C_n Abar_n^l Bbar_n.
    rng = np.random.default_rng(7)
    h, m, length = 2, 5, 64
    lam = -rng.uniform(0.1, 1.0, (h, m)) + 1j * rng.uniform(0, 10, (h, m))
    b = rng.standard_normal((h, m)) + 1j * rng.standard_normal((h, m))
    c = rng.standard_normal((h, m)) + 1j * rng.standard_normal((h, m))
    dt = np.array([0.01, 0.1])
    system = ssmserve.SsmSystem(lam=lam, b=b, c=c, dt=dt)
    got = client.kernel(length, system=system, method="diagonal", discretization="bilinear")
    a_bar = (1 + dt[:, None] / 2 * lam) / (1 - dt[:, None] / 2 * lam)
    b_bar = dt[:, None] * b / (1 - dt[:, None] / 2 * lam)
    powers = a_bar[:, :, None] ** np.arange(length)
    want = 2 * np.real(np.einsum("hm,hml->hl", c * b_bar, powers))
    assert max_relative_diff(got, want) <= 1e-10


def test_every_code_has_its_class():
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        e = ssmserve.errors.error_for(code, "as the server said it")
        assert isinstance(e, ssmserve.SsmError)
        assert e.code == code and e.message == "as the server said it"
        assert type(e).__name__.lower() == code.name.replace("_", "").lower()
        assert str(e) == f"{code.name}: as the server said it"


def test_unreachable_and_late(server):
    # A port bound and not listening: connections are refused, and no
    # server started by a test running alongside can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with ssmserve.Client(f"127.0.0.1:{port}", timeout=2.0, token="") as nobody:
            with pytest.raises(ssmserve.Unavailable):
                nobody.models()
            with pytest.raises(ssmserve.Unavailable, match="within 0.2 s"):
                nobody.wait_ready(0.2)
    with ssmserve.Client(server.address, token="") as c:
        with pytest.raises(ssmserve.DeadlineExceeded):
            c.infer("s4-demo", np.zeros((8, 4096, 1)), timeout=0.001)


def test_local_server_on_a_unix_socket(tmp_path):
    # A co-located client's transport: the same answers as over TCP, the
    # socket file there while it serves and gone after a clean stop.
    path = tmp_path / "ssm.sock"
    x = sequence(30, 1, seed=5)
    with local_server(unix_socket=path) as s:
        assert s.address == f"unix:{path}"
        assert path.is_socket()
        with ssmserve.Client(s.address, token="") as c:
            with c.session("legt-delay") as session:
                streamed = session.run(x, chunk=1)
            whole = c.infer("legt-delay", x)
    assert s.stop() == 0
    assert not path.exists()
    assert max_relative_diff(streamed, whole) <= WIRE_TOLERANCE


def test_local_server_moves_off_a_taken_port(monkeypatch):
    # The port it picked is taken before the server binds it: it picks
    # another. A server that cannot start says why, with its log.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy])
        real = ssmserve.local.free_port
        monkeypatch.setattr(ssmserve.local, "free_port", lambda: next(picks, None) or real())
        with local_server() as s:
            assert s.port != busy
            with ssmserve.Client(s.address, token="") as c:
                assert "s4-demo" in [m.name for m in c.models()]
        monkeypatch.undo()
        with pytest.raises(ssmserve.Unavailable, match="cannot listen"):
            local_server(port=busy).start()
    with pytest.raises(ssmserve.Unavailable, match="exited with"):
        local_server(flags=["--no_such_flag"]).start()
