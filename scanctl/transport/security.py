"""CurveZMQ authentication for the control server and driver services (docs/server.md#security).

Key files are those of :func:`zmq.auth.create_certificates`: ``NAME.key`` (public) and ``NAME.key_secret``
(public and secret), written by ``scanctl keys generate DIR [--name NAME]``.

- A server (:class:`ServerCurve`) has a secret key and a directory of the public keys of the clients it
  lets in; one :class:`zmq.auth.thread.ThreadAuthenticator` per ZeroMQ context checks every connection
  (each server its own ZAP domain, so servers in one process may allow different clients). A client with
  another key, or without CURVE, never gets through the handshake.
- A client (:class:`ClientCurve`) has its own key pair and the server's public key.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from scanctl.errors import ConfigError

log = logging.getLogger(__name__)

SERVER_NAME = "server"
CLIENT_NAME = "client"


def generate(directory: str | Path, name: str = SERVER_NAME) -> tuple[Path, Path]:
    """Write a new key pair ``DIRECTORY/NAME.key`` and ``NAME.key_secret`` (the secret one readable by its
    owner only); returns their paths. Refuses to overwrite an existing pair (ConfigError)."""
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise ConfigError(f"{public} or {secret} already exists: not overwriting a key")
    directory.mkdir(parents=True, exist_ok=True)
    made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
    Path(made_secret).chmod(0o600)
    return Path(made_public), Path(made_secret)


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read a CurveZMQ key: {exc}") from exc
    if secret and secret_key is None:
        raise ConfigError(f"{path}: not a secret key file (expected a .key_secret file)")
    return public_key, secret_key


def _secret_file(path: str | Path, default_name: str) -> Path:
    """``path`` itself, or the key pair in the directory ``path``: ``DEFAULT_NAME.key_secret``, else the only
    ``*.key_secret`` there."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise ConfigError(f"{path}: no such key file or directory")
        return path
    preferred = path / f"{default_name}.key_secret"
    if preferred.exists():
        return preferred
    found = sorted(path.glob("*.key_secret"))
    if len(found) != 1:
        raise ConfigError(f"{path}: expected {preferred.name} or exactly one *.key_secret file "
                          f"(found {len(found)})")
    return found[0]


@dataclass(frozen=True)
class ClientCurve:
    """A client's key pair and the public key of the server it talks to."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    @classmethod
    def load(cls, keys: str | Path, server_key: str | Path | None = None) -> ClientCurve:
        """``keys``: the client's ``.key_secret`` file, or a directory holding it (``client.key_secret``, or
        the only one); ``server_key``: the server's public key file (default: ``server.key`` beside it)."""
        secret_file = _secret_file(keys, CLIENT_NAME)
        public, secret = _load(secret_file, secret=True)
        server_file = Path(server_key) if server_key is not None else secret_file.parent / f"{SERVER_NAME}.key"
        if not server_file.exists():
            raise ConfigError(f"{server_file}: the server's public key is missing (copy the server's "
                              f"{SERVER_NAME}.key there, or name it with --server-key)")
        server, _ = _load(server_file, secret=False)
        assert secret is not None
        return cls(public, secret, server)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` (before it connects) a CURVE client of the server."""
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key
        socket.curve_serverkey = self.server_key


@dataclass(frozen=True)
class ServerCurve:
    """A server's secret key and the directory of the client public keys it allows."""

    public_key: bytes
    secret_key: bytes
    allow: Path
    domain: str = field(default_factory=lambda: f"scanctl-{uuid.uuid4().hex[:12]}")

    @classmethod
    def load(cls, keys: str | Path, allow: str | Path | None) -> ServerCurve:
        """``keys``: the server's ``.key_secret`` file or a directory holding it (``server.key_secret``, or
        the only one); ``allow``: a directory of allowed client public keys (``*.key``)."""
        if allow is None:
            raise ConfigError("CURVE needs a directory of allowed client public keys (--allow DIR)")
        allow = Path(allow)
        if not allow.is_dir():
            raise ConfigError(f"{allow}: not a directory of client public keys")
        if not any(allow.glob("*.key")):
            raise ConfigError(f"{allow}: no client public keys (*.key) in it: no client could connect")
        public, secret = _load(_secret_file(keys, SERVER_NAME), secret=True)
        assert secret is not None
        return cls(public, secret, allow)

    def apply(self, socket: zmq.Socket[Any], context: zmq.Context[Any]) -> None:
        """Make ``socket`` (before it binds) a CURVE server that admits only the allowed clients."""
        _authenticator(context).configure_curve(domain=self.domain, location=str(self.allow))
        socket.zap_domain = self.domain.encode()
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True


_authenticators: dict[int, ThreadAuthenticator] = {}
_lock = threading.Lock()


def _authenticator(context: zmq.Context[Any]) -> ThreadAuthenticator:
    """The one ZAP handler of ``context`` (started on first use, running as long as the context)."""
    with _lock:
        auth = _authenticators.get(id(context))
        if auth is None or auth.context is not context:
            auth = ThreadAuthenticator(context)
            auth.start()
            _authenticators[id(context)] = auth
        return auth


def refuse_unauthenticated(endpoints: list[str | None], curve: ServerCurve | None, insecure: bool,
                           what: str) -> None:
    """Raise ConfigError if a network (non-loopback) endpoint would be served without CURVE or ``insecure``."""
    if curve is not None:
        return
    for endpoint in endpoints:
        if endpoint is not None and not is_loopback(endpoint):
            if insecure:
                log.warning("serving %s on %s without authentication (--insecure): anyone who reaches it may "
                            "command it", what, endpoint)
                continue
            raise ConfigError(f"{endpoint} is not a loopback address: refusing to serve {what} on a network "
                              f"without authentication; give CurveZMQ keys (--keys DIR --allow DIR; "
                              f"scanctl keys generate) or pass --insecure to do it anyway")


def is_loopback(endpoint: str) -> bool:
    """True for ``inproc://``, ``ipc://`` and TCP endpoints on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = urlsplit(endpoint).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
