"""The synchronous client: ssmserve.Client and its Session."""

import collections
import threading
import time

import grpc
import numpy as np

from . import _channel, _resume, _session_common as common, _wire, errors
from ._stubs import pb, rpc
from ._wire import Snapshot

_DEFAULT = object()


class Client:
    """A connection to an ssm_server (or several behind one target).

    address: any gRPC target: "127.0.0.1:50051", "dns:///ssm.example:50051",
      "ipv4:127.0.0.1:50051,127.0.0.1:50052" (with load_balancing="round_robin").
    ca: the CA certificate (path or PEM bytes) that signed the server's; any
      of ca/cert/key turns TLS on (tls=True alone: TLS with the system's CAs).
    cert, key: a client certificate and its key (path or PEM bytes), for
      servers that ask for one (mTLS).
    token: a bearer token, sent as `authorization: Bearer <token>` metadata
      on every call; None reads the environment variable SSM_TOKEN ("" sends
      none).
    server_name: the name to verify in the server's certificate when it is
      not the address's host.
    timeout: seconds for each unary call (and a stream's open), None: none.
    wait_for_ready: unary calls wait (up to timeout) for the channel to
      connect instead of failing at once with Unavailable.
    reconnect_backoff, max_reconnect_backoff: seconds before reconnecting a
      broken connection, growing to the max (gRPC's defaults 1 and 120;
      shorter helps a stream resume quickly on a restarted server).
    channel_options: more gRPC channel arguments, (name, value) pairs.

    Every call raises an ssmserve.SsmError subclass with the gRPC code and
    the server's message. A Client may be shared by threads; each Session
    belongs to one thread at a time.
    """

    def __init__(self, address="127.0.0.1:50051", *, ca=None, cert=None, key=None, token=None,
                 tls=None, server_name=None, timeout=30.0, load_balancing=None,
                 max_message_bytes=64 << 20, wait_for_ready=False, reconnect_backoff=1.0,
                 max_reconnect_backoff=120.0, channel_options=()):
        self._plan = _channel.plan(
            address, ca=ca, cert=cert, key=key, token=token, tls=tls, server_name=server_name,
            load_balancing=load_balancing, max_message_bytes=max_message_bytes,
            reconnect_backoff=reconnect_backoff, max_reconnect_backoff=max_reconnect_backoff,
            channel_options=channel_options)
        if self._plan.tls is not None:
            self._channel = grpc.secure_channel(
                address, _channel.credentials(grpc, self._plan.tls), options=self._plan.options)
        else:
            self._channel = grpc.insecure_channel(address, options=self._plan.options)
        self._inference = rpc.InferenceStub(self._channel)
        self._math = rpc.MathStub(self._channel)
        self.address = address
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready

    # -- plumbing ----------------------------------------------------------

    def _call(self, method, request, timeout=_DEFAULT):
        try:
            return method(request, timeout=self.timeout if timeout is _DEFAULT else timeout,
                          metadata=self._plan.metadata, wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    def close(self):
        """Closes the channel (sessions still open are cancelled)."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout=10.0):
        """Waits until the channel connects; Unavailable after `timeout` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise errors.Unavailable(
                f"no connection to {self.address} within {timeout} s") from None

    # -- models ------------------------------------------------------------

    def models(self):
        """The served models (and those that failed to load), as ModelStatus."""
        return _wire.model_statuses(self._call(self._inference.ListModels,
                                               pb.ListModelsRequest()))

    def model(self, name, version=0):
        """One model's ModelInfo (version 0: the newest)."""
        return _wire.model_info(self._call(self._inference.GetModel,
                                           pb.GetModelRequest(model=name, version=int(version))))

    # -- inference ---------------------------------------------------------

    def infer(self, model, x, *, version=0, return_state=False, timeout=_DEFAULT):
        """A whole sequence at once (convolutional mode).

        x: [L, d_input] or [batch, L, d_input] (anything np.asarray takes;
        sent as float32). Returns float32 [L, d_output] or
        [batch, L, d_output], the same rank as x; with return_state, also
        the Snapshot after the last step, to continue in a session
        (`client.resume(snapshot)`)."""
        a, was_2d = _wire.sequence_input(x)
        r = self._call(self._inference.Infer,
                       pb.InferRequest(model=model, version=int(version), input=_wire.to_tensor(a),
                                       return_state=bool(return_state)), timeout)
        y = _wire.from_tensor(r.output)
        y = y[0] if was_2d else y
        if return_state:
            return y, Snapshot.from_proto(r.state)
        return y

    # -- sessions ----------------------------------------------------------

    def session(self, model, *, version=0, batch=1, resume=False):
        """A new streaming session (recurrent mode), state kept by the server:

            with client.session("s4-demo") as s:
                y = s.step(x_t)              # one step [d] -> [d_output]
                ys = s.run(xs, chunk=64)     # [L, d] in chunks -> [L, d_output]

        batch: independent streams in the session (chunks are then
        [batch, T, d]). resume: True or a ssmserve.Resume to survive
        UNAVAILABLE (a replica that dies or drains): the session reopens,
        possibly on another server - by its id where the servers keep
        sessions in a store (Session.durable), else from its last
        snapshot - and replays what it must; the outputs are unchanged."""
        return Session(self, common.open_message(model, version, batch), resume, base=None)

    def resume(self, snapshot, *, model="", version=0, resume=False):
        """A session continuing from a Snapshot (from Session.state(),
        infer(..., return_state=True), or its bytes from a file), here or on
        any server with the same weights. FailedPrecondition for another
        model's snapshot, DataLoss for a corrupted one."""
        proto = _wire.as_snapshot_proto(snapshot)
        open_ = common.open_message(model, version, max(1, proto.batch), resume_from=proto)
        return Session(self, open_, resume, base=proto)

    def reattach(self, session_id, *, resume=False):
        """The session `session_id`, detached on the server (a stream that
        broke, or Session.detach()), continued where it stopped. NotFound
        when the server does not hold it (another replica, or its TTL
        passed). With resume, on a server without a session store its
        state is exported once it is reattached: a starting point that
        outlives the server holding it (a durable session needs none: it
        is found again by its id)."""
        open_ = common.open_message("", 0, 1, session_id=session_id)
        return Session(self, open_, resume, base=None, export_base=session_id)

    def export_state(self, session_id):
        """The Snapshot of a session this server holds (attached or detached)."""
        r = self._call(self._inference.ExportState, pb.ExportStateRequest(session_id=session_id))
        return Snapshot.from_proto(r.state)

    def import_state(self, snapshot, *, model="", version=0):
        """Makes a detached session from a Snapshot; returns its id
        (continue it with reattach)."""
        r = self._call(self._inference.ImportState, pb.ImportStateRequest(
            state=_wire.as_snapshot_proto(snapshot), model=model, version=int(version)))
        return r.session_id

    # -- the Math service --------------------------------------------------

    def hippo(self, measure="legs", n=8, dt=0.1, *, theta=1.0, discretization="bilinear",
              alpha=None):
        """A HiPPO system (A, B) and its discretization with step dt, as a
        Hippo of float64 arrays. measure: legs, legt (S4's normalized LegT),
        lmu (LegT in HiPPO/LMU form, window theta), lagt, fout.
        discretization: bilinear or zoh; alpha: GBT(alpha) instead."""
        return _wire.hippo_result(self._call(self._math.BuildHippo, _wire.hippo_request(
            measure, n, dt, theta, discretization, alpha)))

    def kernel(self, length, *, init="s4", measure="legs", n=64, channels=1, dt_min=1e-3,
               dt_max=1e-1, seed=0, method=None, discretization=None, alpha=None, system=None):
        """An SSM convolution kernel K[h, l], float64 [channels, length].

        The system is an initialization (init: s4 with `measure`, s4d-legs,
        s4d-lin, s4d-inv; n, channels, dt range, seed) or an explicit
        ssmserve.SsmSystem (e.g. a trained layer's weights). method: dplr,
        diagonal or naive (None: dplr with a low-rank part, else diagonal)."""
        r = self._call(self._math.ComputeKernel, _wire.kernel_request(
            length, init, measure, n, channels, dt_min, dt_max, seed, method, discretization,
            alpha, system))
        return _wire.matrix(r.kernel)


class _Call:
    """One StreamInfer call: requests through a queue (so sending never
    blocks on the network), responses read one at a time."""

    _END = object()

    def __init__(self, client, wait_for_ready):
        self._queue = collections.deque()
        self._ready = threading.Condition()
        self._responses = client._inference.StreamInfer(
            self._requests(), metadata=client._plan.metadata, wait_for_ready=wait_for_ready)

    def _requests(self):
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue)
                item = self._queue.popleft()
            if item is self._END:
                return
            yield item

    def write(self, request):
        with self._ready:
            self._queue.append(request)
            self._ready.notify()

    def done_writing(self):
        self.write(self._END)

    def read(self):
        """The next response; None at the end of the call; grpc.RpcError
        when it ended with an error."""
        try:
            return next(self._responses)
        except StopIteration:
            return None

    def cancel(self):
        self._responses.cancel()
        self.done_writing()  # releases gRPC's thread that reads the requests


class Session(common.SessionFacts):
    """A streaming session (see Client.session). Not thread-safe: one
    thread at a time. As a context manager it ends the session on a clean
    exit and leaves it detached on the server (reattachable for the
    server's --session_ttl) when the block raises."""

    def __init__(self, client, open_message, resume, base, export_base=None):
        self._client = client
        self._policy = _resume.policy(resume)
        self._log = _resume.ResumeLog(self._policy)
        self._unacked = collections.deque()
        self._call = None
        self._opened = None
        self._last_state = None
        self._resumes = 0
        self._done = False
        self._open_first(open_message)
        self._position = self._sent = int(self._opened.position)
        if export_base is not None and self._policy is not None and not self._opened.durable:
            try:
                base = self._client.export_state(export_base).to_proto()
            except BaseException:
                self._fail()
                raise
        self._log.start(base, self._opened)

    # -- opening -----------------------------------------------------------

    def _open(self, open_message, *, wait_for_ready, timeout, reopen=False):
        call = _Call(self._client, wait_for_ready)
        call.write(pb.StreamRequest(open=open_message))
        # The stream has no deadline (it may run for days); its open has.
        fired = threading.Event()

        def expire():
            fired.set()
            call.cancel()

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            resp = call.read()
        except grpc.RpcError as e:
            call.cancel()
            if fired.is_set():
                cls = errors.Unavailable if reopen else errors.DeadlineExceeded
                raise cls(f"no answer to the stream's open within {timeout} s") from None
            raise errors.from_rpc_error(e) from None
        finally:
            if timer:
                timer.cancel()
        try:
            opened = common.check_opened(resp)
        except errors.SsmError:
            call.cancel()
            raise
        self._call, self._opened = call, opened

    def _open_first(self, open_message):
        timeout = self._client.timeout
        try:
            self._open(open_message, wait_for_ready=False, timeout=timeout)
            return
        except errors.Unavailable as e:
            if self._policy is None:
                raise
            last = e
        delay = self._policy.backoff
        for _ in range(self._policy.max_attempts):
            time.sleep(delay)
            delay *= 2
            try:
                self._open(open_message, wait_for_ready=True,
                           timeout=self._policy.connect_timeout, reopen=True)
                return
            except errors.Unavailable as e:
                last = e
        raise last

    # -- resume ------------------------------------------------------------

    def _reopen(self):
        open_ = self._log.reopen_message(self._opened)
        self._open(open_, wait_for_ready=True, timeout=self._policy.connect_timeout, reopen=True)
        try:
            expected, replay = self._log.replay_after(int(self._opened.position))
        except errors.SsmError:
            self._call.cancel()
            raise
        received = self._position
        # Answered but not in the reopened state: replayed one at a time
        # (reading each answer keeps flow control from stalling a long
        # replay), outputs dropped.
        for chunk in replay:
            self._call.write(chunk.request(False, received))
            resp = self._read_raw()
            common.check_answer(resp, chunk, expected, self._opened)
            expected += chunk.steps
        # In flight: sent again; their answers go to the caller as usual.
        for chunk in self._unacked:
            self._call.write(chunk.request(chunk.want_state or chunk.forced_state, received))
        self._resumes += 1

    def _reopen_waiting_for_lease(self):
        # A durable session whose previous replica still holds its lease
        # (it died, or drains and has not written it yet): ask again until
        # the lease has run out.
        deadline = time.monotonic() + self._policy.lease_wait
        while True:
            try:
                return self._reopen()
            except errors.FailedPrecondition:
                if not self._log.durable or time.monotonic() >= deadline:
                    raise
            time.sleep(_resume.LEASE_POLL)

    def _recover(self, failure):
        if (self._policy is None or self._done or not isinstance(failure, errors.Unavailable)
                or not self._log.may_recover()):
            raise failure
        delay = self._policy.backoff
        for _ in range(self._policy.max_attempts):
            time.sleep(delay)
            delay *= 2
            try:
                self._reopen_waiting_for_lease()
                return
            except errors.Unavailable as e:
                failure = e
        raise failure

    # -- the call ----------------------------------------------------------

    def _read_raw(self):
        try:
            resp = self._call.read()
        except grpc.RpcError as e:
            self._call.cancel()
            raise errors.from_rpc_error(e) from None
        if resp is None:
            raise errors.Internal("the server ended the stream with chunks unanswered")
        return resp

    def _send(self, values, want_state=False):
        if self._done:
            raise errors.FailedPrecondition("the session is closed")
        chunk = _resume.Chunk(values, want_state=want_state)
        ask = want_state
        if self._log.checkpoint_due(self._sent, chunk.steps):
            ask, chunk.forced_state = True, not want_state
        self._unacked.append(chunk)
        self._sent += chunk.steps
        # What the caller has read: a durable server stores no state past
        # it, so a failure never costs an output that was in flight.
        self._call.write(chunk.request(ask, self._position))

    def _receive(self):
        while True:
            try:
                resp = self._read_raw()
                break
            except errors.SsmError as e:
                self._recover(e)
        chunk = self._unacked[0]
        y, state = common.check_answer(resp, chunk, self._position, self._opened)
        self._unacked.popleft()
        self._position = int(resp.position)
        if state is not None:
            self._last_state = state
        self._log.on_answer(chunk, state, int(resp.durable_position))
        return y, (state if chunk.want_state else None)

    def _fail(self):
        self._done = True
        if self._call is not None:
            self._call.cancel()

    # -- the API -----------------------------------------------------------

    def step(self, x, *, want_state=False):
        """Runs one chunk: x is [d_input] (one step), [T, d_input] or
        [batch, T, d_input]; returns the outputs shaped like x with
        d_output features. With want_state, returns (y, Snapshot after it)."""
        values, form = _wire.chunk_input(x, self.batch, self.d_input)
        try:
            self._send(values, want_state)
            y, state = self._receive()
        except BaseException:
            self._fail()
            raise
        y = _wire.shape_output(y, form)
        return (y, Snapshot.from_proto(state)) if want_state else y

    def run(self, x, *, chunk=64, in_flight=4):
        """Feeds a whole [L, d_input] (or [batch, L, d_input]) input in
        chunks of `chunk` steps, up to `in_flight` chunks outstanding, and
        returns the outputs [L, d_output] (or [batch, L, d_output])."""
        a, was_2d = _wire.sequence_input(x)
        if a.shape[0] != self.batch or a.shape[2] != self.d_input:
            raise errors.InvalidArgument(
                f"x must be [L, {self.d_input}] or [{self.batch}, L, {self.d_input}] for this "
                f"session, got shape {np.shape(x)}")
        if int(in_flight) < 1:
            raise errors.InvalidArgument(f"in_flight must be >= 1, got {in_flight}")
        pieces = collections.deque(common.plan_chunks(a.shape[1], chunk))
        outputs = []
        try:
            while pieces or self._unacked:
                while pieces and len(self._unacked) < in_flight:
                    t0, t1 = pieces.popleft()
                    self._send(np.ascontiguousarray(a[:, t0:t1]))
                outputs.append(self._receive()[0])
        except BaseException:
            self._fail()
            raise
        return common.join_outputs(outputs, self.batch, self.d_output, was_2d)

    def state(self):
        """The Snapshot of the session now: the one the last chunk brought
        if it is current, else exported from the server (ExportState, which
        goes to the server the channel picks: behind a load balancer over
        replicas, prefer step(x, want_state=True))."""
        if self._last_state is not None and self._last_state.position == self._position:
            return Snapshot.from_proto(self._last_state)
        return self._client.export_state(self.session_id)

    def close(self):
        """Ends the session on the server (a clean half-close)."""
        if self._done:
            return
        self._done = True
        self._call.done_writing()
        try:
            resp = self._call.read()
        except grpc.RpcError as e:
            self._call.cancel()
            raise errors.from_rpc_error(e) from None
        if resp is not None:
            self._call.cancel()
            raise errors.Internal("the server answered after the stream's end")

    def detach(self):
        """Leaves the session detached on the server (kept for its
        --session_ttl; continue it with client.reattach(session_id)) and
        returns its id."""
        self._fail()
        return self.session_id

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._fail()

    def __del__(self):
        if getattr(self, "_call", None) is not None and not self._done:
            self._call.cancel()
