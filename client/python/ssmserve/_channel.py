"""What a channel is made of, shared by the sync and asyncio clients: the
target, the transport credentials (TLS, mTLS), the channel arguments, and
the metadata every call carries (the bearer token)."""

import dataclasses
import os
from typing import Optional, Sequence, Tuple

from . import errors

TOKEN_ENV = "SSM_TOKEN"


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
    target: str
    # The TLS material (PEM bytes) when the channel is secure; None: plaintext.
    tls: Optional[Tuple[Optional[bytes], Optional[bytes], Optional[bytes]]]  # ca, key, cert
    options: Tuple[Tuple[str, object], ...]
    metadata: Tuple[Tuple[str, str], ...]


def _pem(value, what):
    """PEM bytes from a path or from the bytes themselves."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    raise errors.InvalidArgument(f"{what} must be a path or PEM bytes, got {type(value).__name__}")


def _token(token):
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    if not token:
        return ()
    # gRPC metadata values must be printable ASCII; a token read from a file
    # with its newline would otherwise fail every call with a vague error.
    if any(not (0x20 <= ord(ch) < 0x7F) for ch in token):
        raise errors.InvalidArgument(
            "the token has characters other than printable ASCII "
            "(a trailing newline from a file?)")
    return (("authorization", "Bearer " + token),)


def plan(address, *, ca=None, cert=None, key=None, token=None, tls=None, server_name=None,
         load_balancing=None, max_message_bytes=64 << 20, reconnect_backoff=1.0,
         max_reconnect_backoff=120.0, channel_options: Sequence = ()):
    """The channel for these Client arguments (see Client's docstring)."""
    if not isinstance(address, str) or not address:
        raise errors.InvalidArgument(f"address must be a gRPC target such as '127.0.0.1:50051', "
                                     f"got {address!r}")
    if (cert is None) != (key is None):
        raise errors.InvalidArgument("a client certificate needs both cert and key (mTLS)")
    secure = tls if tls is not None else any(v is not None for v in (ca, cert, key))
    if not secure and any(v is not None for v in (ca, cert, key)):
        raise errors.InvalidArgument("ca, cert and key need TLS; tls=False contradicts them")
    material = (_pem(ca, "ca"), _pem(key, "key"), _pem(cert, "cert")) if secure else None
    ms = lambda seconds: max(1, min(int(seconds * 1000), 3600 * 1000))  # noqa: E731
    options = [
        ("grpc.max_send_message_length", int(max_message_bytes)),
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.initial_reconnect_backoff_ms", ms(reconnect_backoff)),
        # Not grpc.min_reconnect_backoff_ms: gRPC takes it as the connect
        # timeout, and a short one cuts off handshakes with a busy server.
        ("grpc.max_reconnect_backoff_ms", max(ms(reconnect_backoff), ms(max_reconnect_backoff))),
    ]
    if load_balancing:
        options.append(("grpc.lb_policy_name", load_balancing))
    if server_name:
        if not secure:
            raise errors.InvalidArgument("server_name is the TLS name to verify; it needs TLS")
        options.append(("grpc.ssl_target_name_override", server_name))
    options.extend(tuple(o) for o in channel_options)
    return ChannelPlan(target=address, tls=material, options=tuple(options),
                       metadata=_token(token))


def credentials(grpc_module, material):
    ca, key, cert = material
    return grpc_module.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
