"""ssmserve: NumPy in, NumPy out, for the ssmserve gRPC service.

    import numpy as np, ssmserve

    client = ssmserve.Client("127.0.0.1:50051")
    client.models()                              # [ModelStatus(name='s4-demo', ...), ...]
    y = client.infer("s4-demo", np.zeros((100, 1)))        # [L, d] -> [L, d_output]
    with client.session("s4-demo") as s:                   # a streaming session
        y_t = s.step(np.array([0.5]))                      # one step
        ys = s.run(np.zeros((1000, 1)), chunk=64)          # many
        snapshot = s.state()                               # portable state
    K = client.kernel(1024, init="s4d-lin", n=64, channels=4)   # [H, L]

ssmserve.aio has the same API for asyncio. Errors are ssmserve.SsmError
subclasses with the gRPC code (ssmserve.errors). client/README.md has the
whole story.
"""

from . import errors
from ._resume import Resume
from ._wire import Hippo, ModelInfo, ModelStatus, Snapshot, SsmSystem
from .client import Client, Session
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                     FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                     PermissionDenied, ResourceExhausted, SsmError, Unauthenticated,
                     Unavailable, Unimplemented, Unknown)
from .local import LocalServer, free_port

__version__ = "0.1.0"

__all__ = [
    "Client", "Session", "Resume", "Snapshot", "ModelInfo", "ModelStatus", "Hippo", "SsmSystem",
    "LocalServer", "free_port", "errors", "SsmError", "Cancelled", "Unknown", "InvalidArgument",
    "DeadlineExceeded", "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
    "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable",
    "DataLoss", "Unauthenticated",
]
