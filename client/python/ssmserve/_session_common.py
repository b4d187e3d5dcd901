"""What the sync and asyncio sessions share: the open request, checking an
answer against the chunk it answers, and the session's public facts."""

import numpy as np

from . import errors
from ._stubs import pb
from ._wire import from_tensor


def open_message(model, version, batch, resume_from=None, session_id=""):
    if int(batch) < 1:
        raise errors.InvalidArgument(f"batch must be >= 1, got {batch}")
    open_ = pb.StreamOpen(model=model or "", version=int(version), batch=int(batch),
                          session_id=session_id or "")
    if resume_from is not None:
        open_.resume_from.CopyFrom(resume_from)
    return open_


def check_opened(resp):
    if resp is None or resp.WhichOneof("kind") != "opened":
        raise errors.Internal("the server answered the stream's open without `opened`")
    return resp.opened


def check_answer(resp, chunk, position, opened):
    """The output [batch, T, d_output] of `resp`, which must answer `chunk`
    sent at `position`, and the state it carries (or None)."""
    if resp.WhichOneof("kind") != "output":
        raise errors.Internal(f"expected the output of the chunk at step {position}, got "
                              f"{resp.WhichOneof('kind') or 'an empty response'}")
    y = from_tensor(resp.output)
    want = (opened.batch, chunk.steps, opened.d_output)
    if y.shape != want or resp.position != position + chunk.steps:
        raise errors.Internal(
            f"the chunk [{position}, {position + chunk.steps}) was answered with position "
            f"{resp.position} and shape {y.shape} (expected {want})")
    return y, (resp.state if resp.HasField("state") else None)


def join_outputs(parts, batch, d_output, was_2d):
    y = (np.concatenate(parts, axis=1) if parts
         else np.zeros((batch, 0, d_output), dtype=np.float32))
    return y[0] if was_2d else y


def plan_chunks(length, chunk):
    if int(chunk) < 1:
        raise errors.InvalidArgument(f"chunk must be >= 1, got {chunk}")
    return [(t, min(t + int(chunk), length)) for t in range(0, length, int(chunk))]


class SessionFacts:
    """Read-only facts of a session (mixed into both flavours)."""

    @property
    def session_id(self):
        """The server's id of the session (the same throughout on a durable
        server; otherwise a new one after each resume)."""
        return self._opened.session_id

    @property
    def durable(self):
        """The server keeps the session in a store shared by its replicas
        (--session_store): it resumes by its id alone, on any of them."""
        return bool(self._opened.durable)

    @property
    def model(self):
        return self._opened.model

    @property
    def version(self):
        return int(self._opened.version)

    @property
    def batch(self):
        return int(self._opened.batch)

    @property
    def d_input(self):
        return int(self._opened.d_input)

    @property
    def d_output(self):
        return int(self._opened.d_output)

    @property
    def position(self):
        """Steps consumed so far (answered chunks)."""
        return self._position

    @property
    def resumes(self):
        """How many times the session moved (reopened after UNAVAILABLE)."""
        return self._resumes

    def __repr__(self):
        return (f"<{type(self).__name__} {self.model!r} v{self.version} batch {self.batch} "
                f"at step {self._position}>")
