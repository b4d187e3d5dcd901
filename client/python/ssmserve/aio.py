"""The asyncio client, over grpc.aio: the same calls as ssmserve.Client as
coroutines, for many concurrent sessions on one event loop.

    import asyncio, ssmserve.aio

    async def main():
        async with ssmserve.aio.Client("127.0.0.1:50051") as client:
            y = await client.infer("s4-demo", x)
            async with client.session("s4-demo") as s:
                y_t = await s.step(x_t)
                ys = await s.run(xs, chunk=64)

    asyncio.run(main())

Arguments, results, errors and resume are ssmserve.Client's. A client
belongs to the event loop it was made in.
"""

import asyncio
import collections

import grpc
import grpc.aio
import numpy as np

from . import _channel, _resume, _session_common as common, _wire, errors
from ._stubs import pb, rpc
from ._wire import Snapshot

__all__ = ["Client", "Session"]

_DEFAULT = object()


class Client:
    """ssmserve.Client's asyncio twin (same constructor arguments)."""

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
            self._channel = grpc.aio.secure_channel(
                address, _channel.credentials(grpc, self._plan.tls), options=self._plan.options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=self._plan.options)
        self._inference = rpc.InferenceStub(self._channel)
        self._math = rpc.MathStub(self._channel)
        self.address = address
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready

    async def _call(self, method, request, timeout=_DEFAULT):
        try:
            return await method(request, timeout=self.timeout if timeout is _DEFAULT else timeout,
                                metadata=self._plan.metadata, wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None

    async def close(self):
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def wait_ready(self, timeout=10.0):
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise errors.Unavailable(
                f"no connection to {self.address} within {timeout} s") from None

    async def models(self):
        return _wire.model_statuses(await self._call(self._inference.ListModels,
                                                     pb.ListModelsRequest()))

    async def model(self, name, version=0):
        return _wire.model_info(await self._call(
            self._inference.GetModel, pb.GetModelRequest(model=name, version=int(version))))

    async def infer(self, model, x, *, version=0, return_state=False, timeout=_DEFAULT):
        a, was_2d = _wire.sequence_input(x)
        r = await self._call(self._inference.Infer, pb.InferRequest(
            model=model, version=int(version), input=_wire.to_tensor(a),
            return_state=bool(return_state)), timeout)
        y = _wire.from_tensor(r.output)
        y = y[0] if was_2d else y
        return (y, Snapshot.from_proto(r.state)) if return_state else y

    def session(self, model, *, version=0, batch=1, resume=False):
        """An unopened Session: `async with client.session(...) as s` (or
        `s = await client.session(...).open()`)."""
        return Session(self, common.open_message(model, version, batch), resume, base=None)

    def resume(self, snapshot, *, model="", version=0, resume=False):
        proto = _wire.as_snapshot_proto(snapshot)
        open_ = common.open_message(model, version, max(1, proto.batch), resume_from=proto)
        return Session(self, open_, resume, base=proto)

    def reattach(self, session_id, *, resume=False):
        open_ = common.open_message("", 0, 1, session_id=session_id)
        return Session(self, open_, resume, base=None, export_base=session_id)

    async def export_state(self, session_id):
        r = await self._call(self._inference.ExportState,
                             pb.ExportStateRequest(session_id=session_id))
        return Snapshot.from_proto(r.state)

    async def import_state(self, snapshot, *, model="", version=0):
        r = await self._call(self._inference.ImportState, pb.ImportStateRequest(
            state=_wire.as_snapshot_proto(snapshot), model=model, version=int(version)))
        return r.session_id

    async def hippo(self, measure="legs", n=8, dt=0.1, *, theta=1.0, discretization="bilinear",
                    alpha=None):
        return _wire.hippo_result(await self._call(self._math.BuildHippo, _wire.hippo_request(
            measure, n, dt, theta, discretization, alpha)))

    async def kernel(self, length, *, init="s4", measure="legs", n=64, channels=1, dt_min=1e-3,
                     dt_max=1e-1, seed=0, method=None, discretization=None, alpha=None,
                     system=None):
        r = await self._call(self._math.ComputeKernel, _wire.kernel_request(
            length, init, measure, n, channels, dt_min, dt_max, seed, method, discretization,
            alpha, system))
        return _wire.matrix(r.kernel)


class Session(common.SessionFacts):
    """ssmserve.Session's asyncio twin. One task at a time per session."""

    def __init__(self, client, open_message, resume, base, export_base=None):
        self._client = client
        self._policy = _resume.policy(resume)
        self._log = _resume.ResumeLog(self._policy)
        self._open_message = open_message
        self._base = base
        self._export_base = export_base
        self._unacked = collections.deque()
        self._call = None
        self._writes = None  # the current call's requests, for its writer
        self._writer = None
        self._opened = None
        self._last_state = None
        self._resumes = 0
        self._position = self._sent = 0
        self._done = False

    async def open(self):
        await self._open_first(self._open_message)
        self._position = self._sent = int(self._opened.position)
        # A reattached session's starting point, unless the server keeps
        # it in a store (then its id is enough).
        if (self._export_base is not None and self._policy is not None
                and not self._opened.durable):
            try:
                self._base = (await self._client.export_state(self._export_base)).to_proto()
            except BaseException:
                self._fail()
                raise
        self._log.start(self._base, self._opened)
        return self

    def __await__(self):
        return self.open().__await__()

    async def __aenter__(self):
        if self._opened is None:
            await self.open()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if exc_type is None:
            await self.close()
        else:
            self._fail()

    async def _open(self, open_message, *, wait_for_ready, timeout, reopen=False):
        call = self._client._inference.StreamInfer(metadata=self._client._plan.metadata,
                                                   wait_for_ready=wait_for_ready)
        try:
            await call.write(pb.StreamRequest(open=open_message))
            resp = await asyncio.wait_for(call.read(), timeout)
        except asyncio.TimeoutError:
            call.cancel()
            cls = errors.Unavailable if reopen else errors.DeadlineExceeded
            raise cls(f"no answer to the stream's open within {timeout} s") from None
        except grpc.RpcError as e:
            call.cancel()
            raise errors.from_rpc_error(e) from None
        if resp is grpc.aio.EOF:
            raise errors.from_rpc_error(await _status_of(call))
        try:
            opened = common.check_opened(resp)
        except errors.SsmError:
            call.cancel()
            raise
        self._stop_writer()
        self._call, self._opened = call, opened
        self._start_writer()

    # Chunks go through a queue to a writer task of the call, so sending
    # never waits on the network: in grpc.aio (1.51) a write that fails
    # because the call ended waits for the call's status, which comes only
    # once the responses still unread have been read - by the same
    # coroutine, when a session pipelines. The reader sees the end of the
    # call (its status) instead, and recovers.
    def _start_writer(self):
        call, queue = self._call, asyncio.Queue()

        async def pump():
            while True:
                request = await queue.get()
                if request is None:
                    return
                try:
                    await call.write(request)
                except Exception:  # noqa: BLE001 - the call is over; the reader says why
                    return

        self._writes, self._writer = queue, asyncio.ensure_future(pump())

    def _stop_writer(self):
        if self._writer is not None:
            self._writer.cancel()
            self._writer = self._writes = None

    async def _open_first(self, open_message):
        try:
            await self._open(open_message, wait_for_ready=False, timeout=self._client.timeout)
            return
        except errors.Unavailable as e:
            if self._policy is None:
                raise
            last = e
        delay = self._policy.backoff
        for _ in range(self._policy.max_attempts):
            await asyncio.sleep(delay)
            delay *= 2
            try:
                await self._open(open_message, wait_for_ready=True,
                                 timeout=self._policy.connect_timeout, reopen=True)
                return
            except errors.Unavailable as e:
                last = e
        raise last

    async def _reopen(self):
        open_ = self._log.reopen_message(self._opened)
        await self._open(open_, wait_for_ready=True, timeout=self._policy.connect_timeout,
                         reopen=True)
        try:
            expected, replay = self._log.replay_after(int(self._opened.position))
        except errors.SsmError:
            self._call.cancel()
            raise
        received = self._position
        for chunk in replay:
            self._write(chunk.request(False, received))
            resp = await self._read_raw()
            common.check_answer(resp, chunk, expected, self._opened)
            expected += chunk.steps
        for chunk in self._unacked:
            self._write(chunk.request(chunk.want_state or chunk.forced_state, received))
        self._resumes += 1

    async def _reopen_waiting_for_lease(self):
        deadline = asyncio.get_running_loop().time() + self._policy.lease_wait
        while True:
            try:
                return await self._reopen()
            except errors.FailedPrecondition:
                if (not self._log.durable
                        or asyncio.get_running_loop().time() >= deadline):
                    raise
            await asyncio.sleep(_resume.LEASE_POLL)

    async def _recover(self, failure):
        if (self._policy is None or self._done or not isinstance(failure, errors.Unavailable)
                or not self._log.may_recover()):
            raise failure
        delay = self._policy.backoff
        for _ in range(self._policy.max_attempts):
            await asyncio.sleep(delay)
            delay *= 2
            try:
                await self._reopen_waiting_for_lease()
                return
            except errors.Unavailable as e:
                failure = e
        raise failure

    def _write(self, request):
        self._writes.put_nowait(request)

    async def _read_raw(self):
        try:
            resp = await self._call.read()
        except grpc.RpcError as e:
            self._call.cancel()
            raise errors.from_rpc_error(e) from None
        if resp is grpc.aio.EOF:
            status = await _status_of(self._call)
            if status.code() != grpc.StatusCode.OK:
                raise errors.from_rpc_error(status)
            raise errors.Internal("the server ended the stream with chunks unanswered")
        return resp

    async def _send(self, values, want_state=False):
        if self._done:
            raise errors.FailedPrecondition("the session is closed")
        chunk = _resume.Chunk(values, want_state=want_state)
        ask = want_state
        if self._log.checkpoint_due(self._sent, chunk.steps):
            ask, chunk.forced_state = True, not want_state
        self._unacked.append(chunk)
        self._sent += chunk.steps
        self._write(chunk.request(ask, self._position))

    async def _receive(self):
        while True:
            try:
                resp = await self._read_raw()
                break
            except errors.SsmError as e:
                await self._recover(e)
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
        self._stop_writer()
        if self._call is not None:
            self._call.cancel()

    async def step(self, x, *, want_state=False):
        values, form = _wire.chunk_input(x, self.batch, self.d_input)
        try:
            await self._send(values, want_state)
            y, state = await self._receive()
        except BaseException:
            self._fail()
            raise
        y = _wire.shape_output(y, form)
        return (y, Snapshot.from_proto(state)) if want_state else y

    async def run(self, x, *, chunk=64, in_flight=4):
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
                    await self._send(np.ascontiguousarray(a[:, t0:t1]))
                outputs.append((await self._receive())[0])
        except BaseException:
            self._fail()
            raise
        return common.join_outputs(outputs, self.batch, self.d_output, was_2d)

    async def state(self):
        if self._last_state is not None and self._last_state.position == self._position:
            return Snapshot.from_proto(self._last_state)
        return await self._client.export_state(self.session_id)

    async def close(self):
        if self._done:
            return
        self._done = True
        if self._writer is not None:
            self._writes.put_nowait(None)  # after any write still queued
            await self._writer
            self._writer = self._writes = None
        try:
            await self._call.done_writing()
            resp = await self._call.read()
        except grpc.RpcError as e:
            self._call.cancel()
            raise errors.from_rpc_error(e) from None
        if resp is not grpc.aio.EOF:
            self._call.cancel()
            raise errors.Internal("the server answered after the stream's end")
        status = await _status_of(self._call)
        if status.code() != grpc.StatusCode.OK:
            raise errors.from_rpc_error(status)

    def detach(self):
        self._fail()
        return self.session_id


class _Status:
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


async def _status_of(call):
    return _Status(await call.code(), await call.details())
