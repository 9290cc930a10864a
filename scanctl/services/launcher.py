"""``scanctl up`` / ``scanctl down``: the control server and every simulated subsystem, each in its own
process (docs/server.md#scanctl-up-and-down).

``up`` starts one ``scanctl driver serve KIND`` per simulated subsystem of the profile (on a free loopback
port), then ``scanctl serve`` with those subsystems as ``tcp://`` proxies, waits until each process has
said where it serves, and records it all in ``RUN_DIR/endpoints.json``::

    {"control": ..., "events": ..., "data": ...,
     "drivers": {KIND: {"endpoint": ..., "pid": ...}}, "server_pid": ...}

Each driver's entry also holds the ``url`` it serves. The simulated gradient and RF systems of one world (by
default both are in ``default``) share it across their processes: ``up`` gives both
``world=tcp://127.0.0.1:PORT`` on a free port (the RF simulator listens there, the gradient simulator sends
it what it plays; :mod:`scanctl.simulators.world`). A world the profile already gives as an endpoint is
kept.

The server keeps its copy of every run in ``RUN_DIR/runs`` (``scanctl runs``, ``scanctl fetch``).
:func:`restart` starts one lost driver again as recorded (``scanctl up --restart KIND``).

Each process's output goes to ``RUN_DIR/logs/NAME.log``. ``down`` stops the server (SIGTERM, SIGKILL after
the timeout), then the drivers, and removes the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from scanctl.config import profile as profiles
from scanctl.errors import ConfigError
from scanctl.hw.registry import is_remote, parse_url

ENDPOINTS_FILE = "endpoints.json"
SEQUENCERS = ("gradient", "rf")  # the simulators --realtime paces
_DRIVER_LINE = re.compile(r"^serving (\w+) \(.*\) on (\S+)$", re.M)
_SERVER_LINE = re.compile(r"commands on (\S+), events on (\S+), data on (\S+)$", re.M)


def _with_option(url: str, key: str, value: str) -> str:
    if key in parse_url(url).options:
        return url
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def _set_option(url: str, key: str, value: str) -> str:
    """``url`` with option ``key`` set to ``value`` (replaced if the URL has it)."""
    parsed = parse_url(url)
    options = {**parsed.options, key: value}
    return f"{parsed.scheme}://{parsed.location}?{urlencode(options, safe=':/@,')}"


def _free_port() -> int:
    """A TCP port free on loopback now (the RF simulator binds it when the server connects it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def simulator_urls(subsystems: dict[str, str]) -> dict[str, str]:
    """The URL each simulated subsystem of ``subsystems`` is served with in a process of its own: a gradient
    and an RF simulator of the same world (a name: one process's) share a world on a free loopback port."""
    urls = {kind: url for kind, url in subsystems.items() if parse_url(url).scheme == "sim"}
    names = {kind: parse_url(urls[kind]).options.get("world", "default") for kind in SEQUENCERS if kind in urls}
    if len(names) == 2 and len(set(names.values())) == 1 and not is_remote(names["rf"]):
        world = f"tcp://127.0.0.1:{_free_port()}"
        urls.update({kind: _set_option(urls[kind], "world", world) for kind in SEQUENCERS})
    return urls


#: The processes :func:`up` started from this process, kept until :func:`down` stops them: a Popen dropped
#: while its process runs warns (ResourceWarning) when it is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a finished child of ours is reaped here, so it does not count)."""
    child = _CHILDREN.get(pid)
    if child is not None:  # started here: its Popen reaps it (and knows it ended)
        return child.poll() is None
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # a zombie: exited, waiting for a parent that is not us
    return True


def _is_scanctl(pid: int) -> bool:
    """Guard against a recycled pid: on Linux, only a process whose command line names scanctl is ours."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.exists():
        return True  # no /proc: trust the file
    try:
        return b"scanctl" in cmdline.read_bytes()
    except OSError:
        return False


def _spawn(name: str, argv: list[str], logs: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = logs / f"{name}.log"
    if log_path.exists():  # a process started again (restart): its predecessor's log is kept beside it
        log_path.replace(logs / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.log")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "scanctl", *argv], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc, log_path


def _wait_for(proc: subprocess.Popen[bytes], log_path: Path, pattern: re.Pattern[str], timeout_s: float,
              name: str) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_path.read_text(errors="replace")
        match = pattern.search(text)
        if match:
            return match
        if proc.poll() is not None:
            tail = "\n".join(text.strip().splitlines()[-5:])
            raise ConfigError(f"{name} exited with status {proc.returncode} before serving (see {log_path}):\n{tail}")
        if time.monotonic() > deadline:
            raise ConfigError(f"{name} did not say where it serves within {timeout_s:g} s (see {log_path})")
        time.sleep(0.05)


def _forget(pids: list[Any]) -> None:
    """Drop the Popen of children that were stopped (polled first: it then knows its process ended)."""
    for pid in pids:
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.poll()


def _stop(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM ``pids``, SIGKILL whatever still runs after ``timeout_s``; returns the pids signalled."""
    signalled = []
    for pid in pids:
        if _alive(pid) and _is_scanctl(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                signalled.append(pid)
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in signalled) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in signalled:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in signalled) and time.monotonic() < deadline:
        time.sleep(0.05)
    return signalled


def up(run_dir: str | Path, *, system: str | None = None, control: str | None = None, events: str | None = None,
       data: str | None = None, realtime: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
    """Start the driver services and the control server; write and return the ``endpoints.json`` record.
    Endpoints not given are the profile's (``[server]``). Returns when every process serves. Raises
    ConfigError (everything started is stopped again)."""
    run_dir = Path(run_dir)
    record_path = run_dir / ENDPOINTS_FILE
    if record_path.exists():
        old_server, old_drivers = _recorded_pids(record_path)
        if any(_alive(pid) for pid in (old_server, *old_drivers.values()) if pid is not None):
            raise ConfigError(f"{record_path}: already up (scanctl down --run-dir {run_dir} first)")
    if system is not None and Path(system).exists():
        system = str(Path(system).resolve())  # the processes may resolve paths elsewhere
    profile = profiles.load(system)
    control = control or profile.endpoints["control"]
    events = events or profile.endpoints["events"]
    data = data or profile.endpoints["data"]
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    system_args = ["--system", system] if system is not None else []
    procs: list[subprocess.Popen[bytes]] = []
    drivers: dict[str, dict[str, Any]] = {}
    try:
        # A real (or already remote) subsystem is left out: the server talks to it as the profile says.
        for kind, url in simulator_urls(profile.subsystems).items():
            if realtime and kind in SEQUENCERS:
                url = _with_option(url, "realtime", "1")
            proc, log_path = _spawn(kind, ["driver", "serve", kind, "--url", url, "--bind", "tcp://127.0.0.1:*",
                                           *system_args], logs)
            procs.append(proc)
            match = _wait_for(proc, log_path, _DRIVER_LINE, timeout_s, f"the {kind} driver")
            drivers[kind] = {"endpoint": match.group(2), "pid": proc.pid, "url": url}
        proxies = [arg for kind, d in drivers.items() for arg in (f"--{kind}", d["endpoint"])]
        proc, log_path = _spawn("server", ["serve", *system_args, "--bind", control, "--events", events,
                                           "--data", data, "--data-dir", str((run_dir / "runs").resolve()),
                                           *proxies], logs)
        procs.append(proc)
        match = _wait_for(proc, log_path, _SERVER_LINE, timeout_s, "the control server")
    except BaseException:
        _stop([p.pid for p in reversed(procs)], 5.0)
        _forget([p.pid for p in procs])
        raise
    record = {"control": match.group(1), "events": match.group(2), "data": match.group(3), "drivers": drivers,
              "server_pid": proc.pid}
    if system is not None:
        record["system"] = system  # for restart()
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(record_path)
    return record


def restart(run_dir: str | Path, kind: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Restart the ``kind`` driver that :func:`up` started in ``run_dir``, as it was recorded: the same URL
    (its ``world=`` too, so the RF simulator keeps receiving the gradients) on the same endpoint (so the
    server's proxy reaches it again; a ``reset`` reconnects it). The old process is stopped first if it
    still runs. Returns the updated record. Raises ConfigError naming the file or the kind."""
    run_dir = Path(run_dir)
    record_path = run_dir / ENDPOINTS_FILE
    if not record_path.exists():
        raise ConfigError(f"{record_path}: not found (nothing was started with --run-dir {run_dir})")
    _recorded_pids(record_path)  # checks the record's shape
    record = json.loads(record_path.read_text())
    driver = record["drivers"].get(kind)
    if not isinstance(driver, dict) or not all(isinstance(driver.get(k), str) for k in ("endpoint", "url")):
        known = ", ".join(sorted(record["drivers"])) or "none"
        raise ConfigError(f"{record_path}: no {kind} driver recorded (recorded: {known})")
    pid = driver.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        _stop([pid], 5.0)
        _forget([pid])
    system = record.get("system")
    system_args = ["--system", system] if isinstance(system, str) else []
    proc, log_path = _spawn(kind, ["driver", "serve", kind, "--url", driver["url"], "--bind", driver["endpoint"],
                                   *system_args], run_dir / "logs")
    try:
        _wait_for(proc, log_path, _DRIVER_LINE, timeout_s, f"the {kind} driver")
    except BaseException:
        _stop([proc.pid], 5.0)
        _forget([proc.pid])
        raise
    driver["pid"] = proc.pid
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(record_path)
    return record


def _recorded_pids(record_path: Path) -> tuple[int | None, dict[str, int | None]]:
    """The server's and each driver's pid in ``endpoints.json`` (None where it holds none). Raises
    ConfigError naming the file for one that is not such a record."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{record_path}: unreadable: {exc}") from None
    drivers = record.get("drivers", {}) if isinstance(record, dict) else None
    if not isinstance(drivers, dict) or not all(isinstance(d, dict) for d in drivers.values()):
        raise ConfigError(f"{record_path}: not an endpoints record ({{\"control\": …, \"drivers\": {{KIND: "
                          f"{{\"endpoint\", \"pid\"}}}}, \"server_pid\": …}}); remove it if nothing runs")

    def pid(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    return pid(record.get("server_pid")), {kind: pid(d.get("pid")) for kind, d in drivers.items()}


def down(run_dir: str | Path, *, timeout_s: float = 10.0) -> list[str]:
    """Stop what :func:`up` started in ``run_dir`` (the server first, so it closes its drivers cleanly) and
    remove ``endpoints.json``. Returns the names of the processes that were still running."""
    record_path = Path(run_dir) / ENDPOINTS_FILE
    if not record_path.exists():
        raise ConfigError(f"{record_path}: not found (nothing was started with --run-dir {run_dir})")
    server_pid, drivers = _recorded_pids(record_path)
    stopped = []
    if server_pid is not None and _stop([server_pid], timeout_s):
        stopped.append(f"server (pid {server_pid})")
    signalled = _stop([pid for pid in drivers.values() if pid is not None], timeout_s)
    stopped += [f"{kind} driver (pid {pid})" for kind, pid in drivers.items() if pid in signalled]
    record_path.unlink()
    _forget([server_pid, *drivers.values()])
    return stopped
