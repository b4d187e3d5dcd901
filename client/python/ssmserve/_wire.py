"""Between NumPy and the wire messages, shared by the sync and asyncio
clients: tensors, snapshots, model descriptions, the Math service's
requests and results. Nothing here does I/O."""

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from . import errors
from ._stubs import config_pb, pb

# ---------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------


def sequence_input(x, name="x"):
    """x as float32 [batch, L, d] (C order), and whether it came as [L, d]."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        return np.ascontiguousarray(a[None]), True
    if a.ndim == 3:
        return np.ascontiguousarray(a), False
    raise errors.InvalidArgument(
        f"{name} must be [L, d] or [batch, L, d], got shape {a.shape}"
        + ("; for one feature per step use x[:, None]" if a.ndim == 1 else ""))


def chunk_input(x, batch, d_input):
    """A stream chunk as float32 [batch, T, d] and how to shape the output
    like the input: [d] is one step (batch 1), [T, d] T steps (batch 1),
    [batch, T, d] as is."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a3, form = a[None, None], 1
    elif a.ndim == 2:
        a3, form = a[None], 2
    elif a.ndim == 3:
        a3, form = a, 3
    else:
        raise errors.InvalidArgument(
            f"a chunk must be [d], [T, d] or [batch, T, d], got shape {a.shape}")
    if a3.shape[0] != batch or a3.shape[2] != d_input or a3.shape[1] < 1:
        want = (f"[{d_input}], [T, {d_input}] or [1, T, {d_input}]" if batch == 1
                else f"[{batch}, T, {d_input}]")
        raise errors.InvalidArgument(
            f"a chunk for this session (batch {batch}, d_input {d_input}) must be {want} "
            f"with T >= 1, got shape {a.shape}")
    return np.ascontiguousarray(a3), form


def shape_output(y3, form):
    """Undoes chunk_input's reshaping on the output [batch, T, d_out]."""
    if form == 1:
        return y3[0, 0]
    if form == 2:
        return y3[0]
    return y3


def to_tensor(a):
    """A float32 ndarray as an ssm.v1.Tensor."""
    return pb.Tensor(shape=list(a.shape), values=a.ravel())


def from_tensor(t, what="output"):
    """An ssm.v1.Tensor as a float32 ndarray of its shape."""
    shape = tuple(int(s) for s in t.shape)
    n = len(t.values)
    if int(np.prod(shape, dtype=np.int64)) != n:
        raise errors.Internal(f"the server's {what} has shape {shape} but {n} values")
    return np.fromiter(t.values, dtype=np.float32, count=n).reshape(shape)


def matrix(m):
    """An ssm.v1.Matrix (double) as a [rows, cols] float64 ndarray."""
    return np.array(m.values, dtype=np.float64).reshape(m.rows, m.cols)


def complex_matrix(a, name):
    a = np.asarray(a, dtype=np.complex128)
    if a.ndim != 2:
        raise errors.InvalidArgument(f"{name} must be a 2-D array [H, N/2], got shape {a.shape}")
    return pb.ComplexMatrix(rows=a.shape[0], cols=a.shape[1],
                            real=a.real.ravel().tolist(), imag=a.imag.ravel().tolist())


# ---------------------------------------------------------------------------
# Snapshots and models
# ---------------------------------------------------------------------------


_SNAPSHOT_MAGIC = b"SSMSNAP\0"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A session's state, portable to any server with the same weights.

    `data` is what the server reads (format version, model name, weights
    fingerprint, position, per-layer state, CRC-32C); `signature` is the
    HMAC a server with --snapshot_keys signs it with (empty otherwise), and
    such a server takes back only signed snapshots; the other fields are
    copies for humans and routing (empty/0 for an unsigned snapshot read
    from a file). `bytes(snapshot)` and `Snapshot.from_bytes` are the bytes
    that `ssm_client --save_state` and `--resume_state` write and read:
    `data` alone when unsigned, the whole ssm.v1.StateSnapshot message
    (protobuf binary) when signed, so the signature travels with it."""

    data: bytes
    model: str = ""
    version: int = 0
    fingerprint: int = 0
    position: int = 0
    batch: int = 0
    signature: bytes = b""

    def __bytes__(self):
        if not self.signature:
            return self.data
        return self.to_proto().SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        # Raw data starts with its magic, a message with field 1's tag.
        if not data.startswith(_SNAPSHOT_MAGIC):
            message = pb.StateSnapshot()
            try:
                message.ParseFromString(data)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError varies by backend
                message = None
            if message is not None and message.data.startswith(_SNAPSHOT_MAGIC):
                return cls.from_proto(message)
        # Anything else goes as it is: the server says what is wrong with it.
        return cls(data=data)

    def save(self, path):
        with open(path, "wb") as f:
            f.write(bytes(self))

    @classmethod
    def load(cls, path):
        with open(path, "rb") as f:
            return cls.from_bytes(f.read())

    def to_proto(self):
        return pb.StateSnapshot(data=self.data, model=self.model, version=self.version,
                                fingerprint=self.fingerprint, position=self.position,
                                batch=self.batch, signature=self.signature)

    @classmethod
    def from_proto(cls, s):
        return cls(data=bytes(s.data), model=s.model, version=int(s.version),
                   fingerprint=int(s.fingerprint), position=int(s.position), batch=int(s.batch),
                   signature=bytes(s.signature))

    def __repr__(self):
        return (f"Snapshot(model={self.model!r}, version={self.version}, "
                f"position={self.position}, batch={self.batch}, {len(self.data)} bytes"
                f"{', signed' if self.signature else ''})")


def as_snapshot_proto(snapshot):
    if isinstance(snapshot, Snapshot):
        return snapshot.to_proto()
    if isinstance(snapshot, (bytes, bytearray, memoryview)):
        return Snapshot.from_bytes(snapshot).to_proto()
    if isinstance(snapshot, pb.StateSnapshot):
        return snapshot
    raise errors.InvalidArgument(
        f"a snapshot must be a Snapshot or its bytes, got {type(snapshot).__name__}")


@dataclasses.dataclass(frozen=True)
class ModelStatus:
    """One entry of models(): a served model's loaded versions, or why it
    (or a version of it) is not served."""

    name: str
    versions: List[int]
    error: str = ""

    @property
    def ready(self):
        return not self.error and bool(self.versions)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """model(name): what a model takes and gives, and what it costs.
    `config` is the ssm.v1.ModelConfig message itself (every field of
    proto/ssm/v1/model_config.proto)."""

    name: str
    version: int
    description: str
    d_input: int
    d_output: int
    max_length: int
    streamable: bool
    fingerprint: int
    memory_bytes: int
    state_bytes: int
    kind: str  # "s4" or "hippo"
    config: object = dataclasses.field(repr=False, compare=False)


def model_info(r):
    c = r.config
    return ModelInfo(name=c.name, version=int(r.version), description=c.description,
                     d_input=int(c.d_input), d_output=int(c.d_output),
                     max_length=int(c.max_length), streamable=bool(r.streamable),
                     fingerprint=int(r.fingerprint), memory_bytes=int(r.memory_bytes),
                     state_bytes=int(r.state_bytes), kind=c.WhichOneof("architecture") or "",
                     config=c)


def model_statuses(r):
    return [ModelStatus(name=m.name, versions=[int(v) for v in m.versions], error=m.error)
            for m in r.models]


# ---------------------------------------------------------------------------
# The Math service
# ---------------------------------------------------------------------------

MEASURES = {
    "legs": pb.HIPPO_MEASURE_LEGS, "legt": pb.HIPPO_MEASURE_LEGT, "lmu": pb.HIPPO_MEASURE_LMU,
    "lagt": pb.HIPPO_MEASURE_LAGT, "fout": pb.HIPPO_MEASURE_FOUT,
}
INITS = {
    "s4": pb.SsmInit.KIND_S4, "s4d-legs": pb.SsmInit.KIND_S4D_LEGS,
    "s4d-lin": pb.SsmInit.KIND_S4D_LIN, "s4d-inv": pb.SsmInit.KIND_S4D_INV,
}
METHODS = {
    None: pb.KERNEL_METHOD_UNSPECIFIED, "dplr": pb.KERNEL_METHOD_DPLR,
    "diagonal": pb.KERNEL_METHOD_DIAGONAL, "naive": pb.KERNEL_METHOD_NAIVE,
}
DISCRETIZATIONS = {"bilinear": config_pb.DISCRETIZATION_KIND_BILINEAR,
                   "zoh": config_pb.DISCRETIZATION_KIND_ZOH}


def _pick(table, value, what):
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        names = ", ".join(str(k) for k in table if k is not None)
        raise errors.InvalidArgument(f"{what} must be one of {names}; got {value!r}")
    return table[key]


def discretization(kind, alpha):
    d = pb.Discretization()
    if alpha is not None:
        d.alpha = float(alpha)
    elif kind is not None:
        d.kind = _pick(DISCRETIZATIONS, kind, "discretization")
    return d


@dataclasses.dataclass(frozen=True)
class Hippo:
    """hippo(): x' = A x + B u and its discretization x_k = A_bar x_{k-1} + B_bar u_k
    (float64; A, A_bar [N, N], B, B_bar [N, 1])."""

    A: np.ndarray
    B: np.ndarray
    A_bar: np.ndarray
    B_bar: np.ndarray


def hippo_request(measure, n, dt, theta, kind, alpha):
    return pb.BuildHippoRequest(measure=_pick(MEASURES, measure, "measure"), n=int(n),
                                theta=float(theta), dt=float(dt),
                                discretization=discretization(kind, alpha))


def hippo_result(r):
    return Hippo(A=matrix(r.a), B=matrix(r.b), A_bar=matrix(r.a_bar), B_bar=matrix(r.b_bar))


@dataclasses.dataclass
class SsmSystem:
    """An explicit DPLR or diagonal system for kernel(): H channels, M = N/2
    kept modes (one of each conjugate pair), the S4 reference's conventions
    (DESIGN.md section 2). lam, b, c: complex [H, M]; p: a list of rank
    complex [H, M] arrays (empty: diagonal); dt: [H] steps > 0; with
    c_is_c_tilde, c holds C~ for the requested length, as S4 weights do."""

    lam: np.ndarray
    b: np.ndarray
    c: np.ndarray
    dt: Sequence[float]
    p: Sequence[np.ndarray] = ()
    c_is_c_tilde: bool = False

    def to_proto(self):
        return pb.SsmSystem(
            **{"lambda": complex_matrix(self.lam, "lam")},
            p=[complex_matrix(p, f"p[{i}]") for i, p in enumerate(self.p)],
            b=complex_matrix(self.b, "b"), c=complex_matrix(self.c, "c"),
            dt=[float(v) for v in np.ravel(self.dt)], c_is_c_tilde=bool(self.c_is_c_tilde))


def kernel_request(length, init, measure, n, channels, dt_min, dt_max, seed, method,
                   kind, alpha, system: Optional[SsmSystem]):
    req = pb.ComputeKernelRequest(length=int(length), method=_pick(METHODS, method, "method"))
    if system is not None:
        req.explicit_system.CopyFrom(system.to_proto())
    else:
        req.init.CopyFrom(pb.SsmInit(
            kind=_pick(INITS, init, "init"), n=int(n), channels=int(channels),
            measure=_pick(MEASURES, measure, "measure") if init == "s4" else 0,
            dt_min=float(dt_min), dt_max=float(dt_max), seed=int(seed)))
    # Only when asked: a DPLR kernel is bilinear whatever the default.
    if kind is not None or alpha is not None:
        req.discretization.CopyFrom(discretization(kind, alpha))
    return req
