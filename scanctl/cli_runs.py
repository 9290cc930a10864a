"""``scanctl runs`` and ``scanctl fetch``: the runs a control server keeps a copy of, and copying one here
(a console that died mid-scan loses nothing: docs/server.md#a-remote-run). Registered in
:func:`scanctl.cli.build_parser`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0


def add_parsers(sub: Any, connect_arg: Callable[[argparse.ArgumentParser], None],
                client_keys: Callable[[argparse.Namespace], Any]) -> None:
    """Add ``runs`` and ``fetch`` to the ``scanctl`` sub-command parsers ``sub`` (``connect_arg`` adds the
    endpoint and key options, ``client_keys`` reads them)."""
    p = sub.add_parser("runs", help="the runs the control server keeps a copy of",
                       description="List the runs the control server keeps (raw data, sequence, report), oldest "
                                   "first.")
    connect_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_runs, client_keys=client_keys)

    p = sub.add_parser("fetch", help="copy a run the control server keeps into a folder here",
                       description="Copy a run's raw.h5, sequence.seq and report.json from the control server "
                                   "(new files only: nothing is overwritten).")
    connect_arg(p)
    p.add_argument("run", help="the run id (scanctl runs lists them)")
    p.add_argument("--out", help="folder to copy into (default ./RUN)")
    p.set_defaults(func=cmd_fetch, client_keys=client_keys)


def cmd_runs(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client

    with Client(args.connect, keys=args.client_keys(args)) as client:
        body = client.command("runs")
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    print(f"{len(body['runs'])} runs kept in {body['dir']} on the server at {args.connect}")
    for run in body["runs"]:
        sizes = ", ".join(f"{name} {size:,} bytes" for name, size in run["files"].items())
        print(f"  {run['run']}: {sizes}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from scanctl.services.client import Client

    out = Path(args.out) if args.out else Path(args.run)
    with Client(args.connect, keys=args.client_keys(args)) as client:
        written = client.fetch(args.run, out)
    print(f"fetched {args.run} into {out}: {', '.join(p.name for p in written)}")
    return EXIT_OK
