"""Resume on UNAVAILABLE, the bookkeeping half (shared by the sync and
asyncio sessions; the I/O half is each session's _recover/_reopen).

Two ways, chosen by the server's answer to the open (`opened.durable`):

- Durable (the server keeps sessions in a store shared by its replicas,
  --session_store): the session is found again by its id alone, on any
  replica. The client asks for no snapshots; it keeps the chunks the store
  does not have yet (those past the latest `durable_position`), and a
  reopen skips the kept chunks the store already has (`opened.position`),
  replays the rest and sends again those in flight. While the replica it
  left still holds the session's lease the reopen is FAILED_PRECONDITION,
  asked again for up to `lease_wait` seconds.
- Otherwise the session asks for its state every `checkpoint_steps` steps,
  keeps the latest snapshot and the chunks answered since, and reopens
  from that snapshot (a new session id) and replays those chunks.

Either way replayed outputs are dropped (the caller has them) and the
chunks still unanswered are sent again; replays repeat the same chunks on
the same state, so the caller sees every output once and unchanged. Every
chunk says how far the caller has read (`received`), so that a durable
server stores no state whose outputs the caller lacks.

How a broken session is found again is decided in one place,
ResumeLog.reopen_message.
"""

import collections
import dataclasses
from typing import Deque, Optional

import numpy as np

from . import errors
from ._stubs import pb


# Seconds between reopens while another replica holds a durable session's
# lease.
LEASE_POLL = 0.2


@dataclasses.dataclass(frozen=True)
class Resume:
    """How a session resumes after UNAVAILABLE.

    checkpoint_steps: the state is asked for with the chunk that reaches
      each multiple of this many steps (one snapshot on the wire each time;
      the inputs since the last one are kept in memory).
    max_attempts: reopen attempts per failure, and failures in a row with
      no answer in between, before the error is raised.
    backoff: seconds before the first attempt, doubled each time.
    connect_timeout: seconds one attempt waits for a server to answer.
    lease_wait: durable sessions: seconds to keep asking while the replica
      the session left still holds its lease (one that died lets go after
      the server's --session_lease).

    Against a durable server checkpoint_steps is unused: the server
    checkpoints the session itself."""

    checkpoint_steps: int = 256
    max_attempts: int = 5
    backoff: float = 0.1
    connect_timeout: float = 5.0
    lease_wait: float = 20.0

    def __post_init__(self):
        if self.checkpoint_steps < 1:
            raise errors.InvalidArgument(
                f"checkpoint_steps must be >= 1, got {self.checkpoint_steps}")
        if self.max_attempts < 1:
            raise errors.InvalidArgument(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.lease_wait < 0:
            raise errors.InvalidArgument(f"lease_wait must be >= 0, got {self.lease_wait}")


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

    def request(self, want_state, received):
        """The chunk as a request; `received`: the steps of outputs the
        caller has read (the position of the latest answer)."""
        return pb.StreamRequest(
            chunk=pb.Tensor(shape=list(self.values.shape), values=self.values.ravel()),
            want_state=want_state, received=int(received))


class ResumeLog:
    """What a session keeps to resume: durable, the chunks the store does
    not have yet; otherwise the latest snapshot, the chunks answered since,
    and when the next snapshot is due. Keeps nothing without a policy."""

    def __init__(self, policy_: Optional[Resume]):
        self.policy = policy_
        self.snapshot: Optional[pb.StateSnapshot] = None
        self.answered: Deque[Chunk] = collections.deque()
        self.durable = False
        self.session_id = ""
        self._answered_start = 0  # the position self.answered starts at
        self._next_checkpoint = 0
        self._failures = 0

    def start(self, base: Optional[pb.StateSnapshot], opened):
        """The session opened (`opened`, the server's StreamOpened), from
        `base` (None: new or reattached)."""
        self.durable = bool(opened.durable)
        self.session_id = opened.session_id
        # A durable session is found again by its id: no snapshot to keep.
        self.snapshot = None if self.durable else base
        self.answered.clear()
        self._answered_start = int(opened.position)
        if self.policy:
            self._next_checkpoint = int(opened.position) + self.policy.checkpoint_steps

    def checkpoint_due(self, sent, steps):
        """For a chunk of `steps` after `sent` steps: must it ask for the
        state? Never for a durable session (the server checkpoints it)."""
        if not self.policy or self.durable or sent + steps < self._next_checkpoint:
            return False
        self._next_checkpoint = sent + steps + self.policy.checkpoint_steps
        return True

    def on_answer(self, chunk: Chunk, state: Optional[pb.StateSnapshot], durable_position=-1):
        """`chunk` was answered, with the state after it (or None) and the
        server's durable position."""
        self._failures = 0
        if not self.policy:
            return
        if self.durable:
            self.answered.append(chunk)
            # What the store has need not be replayed.
            while (self.answered
                   and self._answered_start + self.answered[0].steps <= durable_position):
                self._answered_start += self.answered.popleft().steps
            return
        if state is not None:
            self.snapshot = state
            self.answered.clear()
            self._answered_start = int(state.position)
        else:
            self.answered.append(chunk)

    def may_recover(self):
        """False once max_attempts failures came in a row without an answer
        (a server that accepts each reopen and fails again must not hold
        the stream forever)."""
        self._failures += 1
        return self.policy is not None and self._failures <= self.policy.max_attempts

    def reopen_message(self, last_opened) -> pb.StreamOpen:
        """What a reopen sends, given the previous open's answer: a durable
        session's id; else the latest snapshot, or without one a new
        session of the version the outputs came from (the answered chunks
        are all replayed then)."""
        open_ = pb.StreamOpen(model=last_opened.model, batch=last_opened.batch)
        if self.durable:
            open_.session_id = self.session_id
        elif self.snapshot is not None:
            open_.resume_from.CopyFrom(self.snapshot)
        else:
            open_.version = last_opened.version
        return open_

    def reopen_position(self):
        """The position self.answered starts at: where the reopened session
        must answer (durable: at least; the store may have checkpointed
        further than this client heard)."""
        if self.durable:
            return self._answered_start
        return int(self.snapshot.position) if self.snapshot is not None else 0

    def replay_after(self, opened_position):
        """The answered chunks to replay once the reopened session answered
        at `opened_position`, and the position the first starts at: for a
        durable session the chunks the store already has are skipped.
        Internal when the position is none this client can continue from
        (behind what it kept, ahead of what it has, or mid-chunk)."""
        start = self.reopen_position()
        chunks = collections.deque(self.answered)
        if self.durable:
            while chunks and start + chunks[0].steps <= opened_position:
                start += chunks.popleft().steps
        if opened_position != start:
            raise errors.Internal(f"resumed at position {opened_position}, expected {start}")
        return start, chunks
