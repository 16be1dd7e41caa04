"""CURVE encryption and authentication for sockets that other hosts reach (pyzmq's ``zmq.auth``).

Keys are ZeroMQ certificate files: ``NAME.key`` holds the public key (share it), and
``NAME.key_secret`` the public and secret keys (keep it; it is written readable by its owner
only). ``streamseg keys DIR`` makes a pair. A server socket needs its own secret file and a
folder of the public keys it lets in; a client needs its own secret file and the server's
public file. A peer without an allowed key gets nothing and sends nothing in.

Two uses: the publish socket (:class:`CurveServer`, subscribers are the clients), and, with
``transport.endpoints: tcp``, every socket of the pipeline (:class:`TransportCurve`): the
sockets bound on the supervisor's host are servers, and every connecting socket is a client, the
supervisor's own workers with the server's key pair, workers on other hosts with theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError


def make_keys(folder: str, name: str) -> tuple[str, str]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    public = os.path.join(folder, f"{name}.key")
    if os.path.exists(public) or os.path.exists(public + "_secret"):
        raise ConfigError(f"keys named {name!r} exist in {folder} already; pick another name or remove them")
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return public, secret


def _load(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key: give the NAME.key_secret file")
    return public_key, secret_key


@dataclass(frozen=True)
class CurveServer:
    """A CURVE server: our ``secret_file`` and the folder of client public keys allowed in."""

    secret_file: str
    clients_dir: str

    def apply(self, ctx: zmq.Context, sock: zmq.Socket) -> ThreadAuthenticator:
        """Make ``sock`` a CURVE server before it binds; returns the running authenticator (stop it at the end)."""
        if not os.path.isdir(self.clients_dir):
            raise ConfigError(f"the folder of allowed client keys does not exist: {self.clients_dir}")
        public_key, secret_key = _load(self.secret_file, secret=True)
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=self.clients_dir)
        sock.curve_secretkey = secret_key
        sock.curve_publickey = public_key
        sock.curve_server = True
        return auth


def curve_client(sock: zmq.Socket, secret_file: str, server_public_file: str) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_public_file``."""
    public_key, secret_key = _load(secret_file, secret=True)
    server_key, _ = _load(server_public_file, secret=False)
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public_key
    sock.curve_serverkey = server_key


@dataclass(frozen=True)
class TransportCurve:
    """CURVE for the pipeline's own tcp sockets, as plain data for a worker.

    ``secret_file``: this side's key pair. ``clients_dir``: public keys of the workers on other
    hosts that may connect (set on the supervisor's host, whose binding sockets are servers; its
    own key is always let in). ``server_file``: the supervisor's public key (set on other hosts;
    on the supervisor's host it is taken from ``secret_file``).
    """

    secret_file: str
    clients_dir: str | None = None
    server_file: str | None = None

    def client(self, sock: zmq.Socket) -> None:
        """Make a connecting socket a CURVE client of the supervisor's host."""
        public_key, secret_key = _load(self.secret_file, secret=True)
        sock.curve_secretkey = secret_key
        sock.curve_publickey = public_key
        sock.curve_serverkey = _load(self.server_file, secret=False)[0] if self.server_file else public_key

    def server(self, ctx: zmq.Context, sock: zmq.Socket, auth: list[Any]) -> None:
        """Make a binding socket a CURVE server that lets in the allowed keys (and our own); the
        context's authenticator is started once and appended to ``auth`` (stop it at the end)."""
        if self.clients_dir is None:
            raise ConfigError("a worker on another host binds no sockets: its links connect to the supervisor's host")
        public_key, secret_key = _load(self.secret_file, secret=True)
        if not auth:
            allowed = {public_key} | {_load(os.path.join(self.clients_dir, name), secret=False)[0]
                                      for name in sorted(os.listdir(self.clients_dir)) if name.endswith(".key")}
            authenticator = ThreadAuthenticator(ctx)
            authenticator.start()
            authenticator.configure_curve_callback(domain="*", credentials_provider=_Allowed(allowed))
            auth.append(authenticator)
        sock.curve_secretkey = secret_key
        sock.curve_publickey = public_key
        sock.curve_server = True

    def apply(self, ctx: zmq.Context, sock: zmq.Socket, binds: bool, auth: list[Any]) -> None:
        """Secure a tcp socket as a server when it binds, as a client when it connects."""
        if binds:
            self.server(ctx, sock, auth)
        else:
            self.client(sock)


class _Allowed:
    """The ZAP credentials check: a client is let in when its public key (Z85) is one of ``keys``."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def transport_from_config(secret_file: str | None, clients_dir: str | None) -> dict[str, Any] | None:
    """The supervisor host's transport CURVE settings as plain data, or None when off."""
    if not secret_file and not clients_dir:
        return None
    if not (secret_file and clients_dir):
        raise ConfigError("CURVE needs both transport.curve_secret and transport.curve_clients")
    _load(secret_file, secret=True)
    if not os.path.isdir(clients_dir):
        raise ConfigError(f"the folder of allowed worker keys does not exist: {clients_dir}")
    return {"secret_file": secret_file, "clients_dir": clients_dir}


def server_from_config(secret_file: str | None, clients_dir: str | None) -> dict[str, Any] | None:
    """The CURVE settings of a publish socket as plain data for a worker, or None when off."""
    if not secret_file and not clients_dir:
        return None
    if not (secret_file and clients_dir):
        raise ConfigError("CURVE needs both output.publish_curve_secret and output.publish_curve_clients")
    _load(secret_file, secret=True)  # a bad file fails here, before any worker starts
    if not os.path.isdir(clients_dir):
        raise ConfigError(f"the folder of allowed client keys does not exist: {clients_dir}")
    return {"secret_file": secret_file, "clients_dir": clients_dir}
