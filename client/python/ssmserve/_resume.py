"""Resume on UNAVAILABLE, the bookkeeping half (shared by the sync and
asyncio sessions; the I/O half is each session's _recover/_reopen).

A resumable session asks for its state every `checkpoint_steps` steps,
keeps the latest snapshot and the chunks answered since, and when the call
fails with UNAVAILABLE (a replica died or drains, a connection was cut)
reopens from that snapshot - on whichever server the channel picks - and
replays those chunks, dropping their outputs (the caller has them), then
sends again the chunks still unanswered. Replays repeat the same chunks on
the same state, so the caller sees every output once and unchanged.

How a broken session is found again is decided in one place,
ResumeLog.reopen_message: today from the latest snapshot (the server keeps
sessions in its memory only). When the server stores sessions, reattaching
by session id alone is a change to that method.
"""

import dataclasses
from typing import List, Optional

import numpy as np

from . import errors
from ._stubs import pb


@dataclasses.dataclass(frozen=True)
class Resume:
    """How a session resumes after UNAVAILABLE.

    checkpoint_steps: the state is asked for with the chunk that reaches
      each multiple of this many steps (one snapshot on the wire each time;
      the inputs since the last one are kept in memory).
    max_attempts: reopen attempts per failure, and failures in a row with
      no answer in between, before the error is raised.
    backoff: seconds before the first attempt, doubled each time.
    connect_timeout: seconds one attempt waits for a server to answer."""

    checkpoint_steps: int = 256
    max_attempts: int = 5
    backoff: float = 0.1
    connect_timeout: float = 5.0

    def __post_init__(self):
        if self.checkpoint_steps < 1:
            raise errors.InvalidArgument(
                f"checkpoint_steps must be >= 1, got {self.checkpoint_steps}")
        if self.max_attempts < 1:
            raise errors.InvalidArgument(f"max_attempts must be >= 1, got {self.max_attempts}")


def policy(resume):
    """Session(resume=...) as a Resume or None: True is Resume()."""
    if resume is None or resume is False:
        return None
    if resume is True:
        return Resume()
    if isinstance(resume, Resume):
        return resume
    raise errors.InvalidArgument(f"resume must be a bool or a Resume, got {resume!r}")


@dataclasses.dataclass
class Chunk:
    """A chunk sent on a stream: float32 [batch, T, d_input]."""

    values: np.ndarray
    want_state: bool = False    # the caller's
    forced_state: bool = False  # asked for by the resume policy only

    @property
    def steps(self):
        return self.values.shape[1]

    def request(self, want_state):
        return pb.StreamRequest(
            chunk=pb.Tensor(shape=list(self.values.shape), values=self.values.ravel()),
            want_state=want_state)


class ResumeLog:
    """The latest snapshot of a session, the chunks answered since, and when
    the next snapshot is due. Does nothing without a policy."""

    def __init__(self, policy_: Optional[Resume]):
        self.policy = policy_
        self.snapshot: Optional[pb.StateSnapshot] = None
        self.answered: List[Chunk] = []
        self._next_checkpoint = 0
        self._failures = 0

    def start(self, base: Optional[pb.StateSnapshot], position):
        """The session opened at `position`, from `base` (None: new)."""
        self.snapshot = base
        self.answered = []
        if self.policy:
            self._next_checkpoint = position + self.policy.checkpoint_steps

    def checkpoint_due(self, sent, steps):
        """For a chunk of `steps` after `sent` steps: must it ask for the state?"""
        if not self.policy or sent + steps < self._next_checkpoint:
            return False
        self._next_checkpoint = sent + steps + self.policy.checkpoint_steps
        return True

    def on_answer(self, chunk: Chunk, state: Optional[pb.StateSnapshot]):
        self._failures = 0
        if not self.policy:
            return
        if state is not None:
            self.snapshot = state
            self.answered = []
        else:
            self.answered.append(chunk)

    def may_recover(self):
        """False once max_attempts failures came in a row without an answer
        (a server that accepts each reopen and fails again must not hold
        the stream forever)."""
        self._failures += 1
        return self.policy is not None and self._failures <= self.policy.max_attempts

    def reopen_message(self, last_opened) -> pb.StreamOpen:
        """What a reopen sends, given the previous open's answer: the
        latest snapshot, or without one a new session of the version the
        outputs came from (the answered chunks are all replayed then)."""
        open_ = pb.StreamOpen(model=last_opened.model, batch=last_opened.batch)
        if self.snapshot is not None:
            open_.resume_from.CopyFrom(self.snapshot)
        else:
            open_.version = last_opened.version
        return open_

    def reopen_position(self):
        """The position the reopened session must answer with."""
        return int(self.snapshot.position) if self.snapshot is not None else 0
