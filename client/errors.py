"""What can go wrong for a whole run (per-image problems are FAILURE results, never exceptions).

Every message is one sentence that names the server and says what to do.
"""

from __future__ import annotations


class GenGuardError(Exception):
    """Base class of the client's errors."""


class ServerUnavailable(GenGuardError):
    """The server could not be reached, or the connection was lost, after every retry.

    `partial` holds the results answered before the connection was lost (input order).
    """

    def __init__(self, message: str, partial: list | None = None):
        super().__init__(message)
        self.partial = partial or []


class ModelNotReady(GenGuardError):
    """The server answers but the GenGuard model isn't loaded (or is still loading)."""


class RequestRejected(GenGuardError):
    """The server refused a request (bad shape, unknown model ...): retrying can't help."""


class RequestTimeout(GenGuardError):
    """No answer within the client's timeout."""


def unreachable(url: str, protocol: str, attempts: int, lost: bool = False) -> str:
    what = "lost the connection to" if lost else "cannot reach"
    hint = _port_hint(url, protocol)
    return (f"{what} GenGuard at {url} ({protocol}) after {attempts} attempt{'s' * (attempts != 1)}: "
            f"is the server running? start it with `make serve`, or pass --url{hint}")


def not_ready(url: str, protocol: str, model: str) -> str:
    return (f"GenGuard at {url} ({protocol}) is up but model '{model}' is not ready: wait for it to load "
            f"(check `genguard health --url {url} --protocol {protocol}`) or read the server log")


def _port_hint(url: str, protocol: str) -> str:
    # The commonest wrong URL: the other protocol's default port.
    from genguard.protocol import GRPC_PORT, HTTP_PORT

    port = url.rsplit(":", 1)[-1]
    if protocol == "grpc" and port == str(HTTP_PORT):
        return f" ({HTTP_PORT} is the HTTP port: use port {GRPC_PORT} for gRPC, or --protocol http)"
    if protocol == "http" and port == str(GRPC_PORT):
        return f" ({GRPC_PORT} is the gRPC port: use port {HTTP_PORT} for HTTP, or --protocol grpc)"
    return ""
