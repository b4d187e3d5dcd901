"""Exceptions of the ssmserve client: one class per gRPC status code.

Every failed call raises a subclass of `SsmError` that keeps the server's
gRPC code (`.code`, a `grpc.StatusCode`) and its message unchanged
(`.message`), so code can branch on the kind of failure:

    try:
        y = client.infer("s4-demo", x)
    except ssmserve.InvalidArgument as e:   # bad shape, NaN/Inf: e.message names the field
        ...
    except ssmserve.ResourceExhausted:      # a server limit, or "server busy": retry later
        ...

The codes the server uses (proto/ssm/v1/ssm_service.proto): INVALID_ARGUMENT
(bad shape, NaN/Inf, a bad value), NOT_FOUND (unknown model, version or
session), FAILED_PRECONDITION (another model's snapshot, a model that cannot
stream), DATA_LOSS (a corrupted snapshot), RESOURCE_EXHAUSTED (a limit),
UNAVAILABLE (draining, or no server reachable), DEADLINE_EXCEEDED and
CANCELLED (the caller's), UNAUTHENTICATED and PERMISSION_DENIED (tokens and
certificates). Arguments the client refuses before sending (a wrongly
shaped array) raise InvalidArgument too; it is also a ValueError.
"""

import grpc

__all__ = [
    "SsmError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "from_rpc_error", "error_for",
]


class SsmError(Exception):
    """A failed call. `code` is the grpc.StatusCode, `message` the server's
    message as it came (or the client's own, for errors raised before a call)."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message=""):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


class Cancelled(SsmError):
    code = grpc.StatusCode.CANCELLED


class Unknown(SsmError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(SsmError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(SsmError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(SsmError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SsmError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(SsmError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(SsmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(SsmError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(SsmError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(SsmError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(SsmError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(SsmError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(SsmError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(SsmError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(SsmError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {cls.code: cls for cls in (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
    Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)}


def error_for(code, message):
    """The SsmError subclass instance for a grpc.StatusCode (Unknown for OK
    or a code gRPC adds later, with the code kept)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = Unknown(message)
        err.code = code
        return err
    return cls(message)


def from_rpc_error(e):
    """The SsmError for a grpc.RpcError (sync or asyncio): same code, the
    details unchanged."""
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    return error_for(code, details or "")
