"""A fuzz campaign against ``scanctl up`` (issue 13, defect 1): the control server and each simulated
subsystem's driver service in its own process take a seeded stream of hostile messages — the messages that
killed them, random bytes, hostile JSON, valid messages mutated in structure and in bytes, array references
of every shape, valid ``status`` commands under made-up client names — and a subscriber takes hostile
events. Then a status flood as issue 13 measured it: 65,536 ``status`` commands under 1,024 made-up
``src`` names (what the server keeps per client shows here). A protocol is loaded first, so that each
status snapshot is as big as a console sees it in a session.

Prints the messages sent, the processes killed, whether each still answers a normal request, and the
control server's resident memory before the campaign, after it and after the flood. Targets: no process
killed by any message, every one still answering, server RSS growth < 50 MB over both. Exits 1 when one
is missed.

    .venv/bin/python benchmarks/bench_fuzz.py [--messages 50000] [--status-flood 65536] [--srcs 1024]
                                              [--seed 13] [--load protocols/gre_2d.toml | --load '']

The campaign's messages go 50 % to the server's ROUTER, 10 % to each driver service's and 20 % to the
subscriber. The fuzzer is tests/test_fuzz_campaign.py's (the test runs a smaller campaign of the same kind).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.test_fuzz_campaign

from scanctl.services.client import Client  # noqa: E402
from scanctl.services.launcher import _alive, down, up  # noqa: E402
from scanctl.transport.wire import Message, encode  # noqa: E402
from tests.test_fuzz_campaign import LOOPBACK, Dealer, campaign, rss_mb, summary  # noqa: E402

RSS_GROWTH_LIMIT_MB = 50.0
GRE = Path(__file__).resolve().parents[1] / "protocols" / "gre_2d.toml"


def load(control: str, protocol: str) -> None:
    """Load ``protocol`` as a console would (and give control back)."""
    with Client(control, name="bench-console") as client:
        client.take_control()
        client.command("load", {"path": str(Path(protocol).resolve())})
        client.command("release_control")


def status_flood(record: dict[str, Any], count: int, srcs: int) -> dict[str, Any]:
    """``count`` valid ``status`` commands, each its own request id, under ``srcs`` made-up client names."""
    dealer = Dealer(record["control"])
    started = time.monotonic()
    try:
        for i in range(count):
            dealer.socket.send_multipart(encode(Message(type="command", id=f"flood-{i}", src=f"made-up-{i % srcs}",
                                                        body={"command": "status"})))
            if i % 100 == 99:
                dealer.drain(0)
        dealer.drain(10.0)  # (a server collecting garbage in a big heap may pause a while)
    finally:
        dealer.close()
    alive = _alive(record["server_pid"])
    return {"sent": count, "answers": dealer.answers, "seconds": time.monotonic() - started, "alive": alive,
            "rss_after_mb": rss_mb(record["server_pid"]) if alive else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="fuzzed messages in all (default 50000)")
    parser.add_argument("--status-flood", type=int, default=65_536,
                        help="status commands after the campaign (default 65536; 0: none)")
    parser.add_argument("--srcs", type=int, default=1024, help="made-up client names (default 1024)")
    parser.add_argument("--seed", type=int, default=13, help="the fuzzer's seed (default 13)")
    parser.add_argument("--load", default=str(GRE), help="protocol loaded first (default protocols/gre_2d.toml; "
                                                         "'': none)")
    args = parser.parse_args()
    logging.getLogger("scanctl.services.client").setLevel(logging.ERROR)  # one warning per skipped event otherwise
    requests, calls, events = args.messages // 2, args.messages // 10, args.messages // 5
    with tempfile.TemporaryDirectory() as run_dir:
        record = up(run_dir, control=LOOPBACK, events=LOOPBACK, data=LOOPBACK)
        try:
            if args.load:
                load(record["control"], args.load)
            figures = campaign(record, requests=requests, calls=calls, events=events, seed=args.seed,
                               srcs=args.srcs)
            flood = status_flood(record, args.status_flood, args.srcs) if args.status_flood else None
        finally:
            down(run_dir)
    print(summary(figures))
    final_mb = figures["rss_after_mb"]
    if flood is not None:
        final_mb = flood["rss_after_mb"]
        print(f"status flood: {flood['sent']} status commands under {args.srcs} made-up src names in "
              f"{flood['seconds']:.1f} s, {flood['answers']} answers; control server "
              f"{'alive' if flood['alive'] else 'KILLED'}, RSS {final_mb:.1f} MB after "
              f"(growth since before the campaign {final_mb - figures['rss_before_mb']:+.1f} MB)")
    growth = final_mb - figures["rss_before_mb"]
    missed = []
    if figures["killed"] or (flood is not None and not flood["alive"]):
        missed.append(f"processes killed: {', '.join(figures['killed']) or 'server'}")
    if any(state != "ok" for state in figures["answering"].values()):
        missed.append("a process no longer answers")
    if not growth < RSS_GROWTH_LIMIT_MB:  # (NaN, a dead server, misses too)
        missed.append(f"server RSS grew {growth:.1f} MB (target < {RSS_GROWTH_LIMIT_MB:g} MB)")
    for line in missed:
        print(f"TARGET MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
