"""What the ``scanctl`` commands share: exit codes, argument types and option groups (endpoints, keys,
patient safety), and one-line errors."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import numpy as np

from scanctl.config import profile as profiles
from scanctl.errors import ScanctlError

if TYPE_CHECKING:
    from scanctl.transport.security import ClientCurve, ServerCurve

EXIT_OK, EXIT_LIMITS, EXIT_UNREADABLE = 0, 1, 2
# The control server's default endpoints (scanctl.services.server has the same; not imported: a light startup).
DEFAULT_CONTROL = profiles.DEFAULT_ENDPOINTS["control"]


def connect_arg(p: argparse.ArgumentParser) -> None:
    """--connect and the client's keys: a command to the control server."""
    p.add_argument("--connect", default=DEFAULT_CONTROL, metavar="ENDPOINT",
                   help=f"the control server's command endpoint (default {DEFAULT_CONTROL})")
    client_security_args(p)


def safety_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patient-weight", type=float, metavar="KG",
                   help="the patient's weight for SAR (default: the protocol's; for a Pulseq file a conservative "
                        "assumed weight)")
    p.add_argument("--mode", default="normal", choices=("normal", "first-level"),
                   help="IEC 60601-2-33 operating mode (default normal; first-level only when asked for)")


def json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def client_keys(args: argparse.Namespace) -> ClientCurve | None:
    """The CurveZMQ keys of ``--keys``/``--server-key`` (None without ``--keys``)."""
    from scanctl.transport.security import ClientCurve

    if getattr(args, "keys", None) is None:
        if getattr(args, "server_key", None) is not None:
            raise ScanctlError("--server-key needs --keys (this client's key pair)")
        return None
    return ClientCurve.load(args.keys, args.server_key)


def server_curve(args: argparse.Namespace) -> ServerCurve | None:
    """The CurveZMQ server keys of ``--keys``/``--allow`` (None without ``--keys``)."""
    from scanctl.transport.security import ServerCurve

    if args.keys is None:
        if args.allow is not None:
            raise ScanctlError("--allow needs --keys (the server's key pair)")
        return None
    return ServerCurve.load(args.keys, args.allow)


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_count(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def endpoint_args(p: argparse.ArgumentParser) -> None:
    """--bind/--events/--data: the server's endpoints (default: the profile's [server], else 5555–5557)."""
    d = profiles.DEFAULT_ENDPOINTS
    p.add_argument("--bind", help=f"command endpoint (default: the profile's server.control, else {d['control']}; "
                                  f"':0' for a free port)")
    p.add_argument("--events", help=f"event endpoint (default: server.events, else {d['events']})")
    p.add_argument("--data", help=f"ADC data endpoint, or 'events' to publish data on the event socket "
                                  f"(default: server.data, else {d['data']})")


def endpoints_of(args: argparse.Namespace, prof: profiles.SystemProfile) -> tuple[str, str, str]:
    """The control, events and data endpoints: the options given, else the profile's."""
    e = prof.endpoints
    return args.bind or e["control"], args.events or e["events"], args.data or e["data"]


def server_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", metavar="PATH", help="CurveZMQ: the server's .key_secret file, or a directory holding "
                                                  "server.key_secret; requires CURVE of every client")
    p.add_argument("--allow", metavar="DIR", help="with --keys: directory of the allowed clients' public keys (*.key)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without authentication")


def client_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", metavar="PATH", help="CurveZMQ: this client's .key_secret file, or a directory holding "
                                                  "client.key_secret (and the server's server.key)")
    p.add_argument("--server-key", metavar="FILE", help="with --keys: the server's public key "
                                                        "(default server.key beside the client key)")


def one_line(text: object) -> str:
    """``text`` on one line: an error that carries several (a child's log tail, a parser's message)
    keeps every line, joined with `` | ``."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())
