"""``scanctl run --connect``: a scan on the control server through the same scan session as one in this
process (:class:`scanctl.engine.session.ScanSession`), over :class:`RemotePort`; the console writes the
run's files here as the data arrive (docs/server.md#a-remote-run)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanctl.errors import ScanctlError, WireProtocolError
from scanctl.hw.interfaces import AcquisitionBatch
from scanctl.services.client import (
    Client,
    CommandError,
    ServerLostError,
    ServerTimeoutError,
    Subscription,
    acquisitions_of,
)

log = logging.getLogger(__name__)


def header_from_plain(plain: dict[str, Any]) -> Any:
    """The RawHeader a ``load`` reply's ``header`` describes (its fields as JSON; floats are exact, where
    the XML header's unit conversions are not)."""
    from scanctl.data.rawdata import EncodingLimit, RawHeader

    values = dict(plain)
    for key in ("fov_m", "encoded_matrix", "recon_matrix", "tr_s", "te_s", "flip_angle_deg"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values["limits"] = {k: EncodingLimit(**v) for k, v in values.get("limits", {}).items()}
    if isinstance(values.get("coil_names"), list):
        values["coil_names"] = tuple(values["coil_names"])
    if values.get("noise_covariance") is not None:  # a complex array (scanctl.services.commands.header_to_plain)
        values["noise_covariance"] = tuple(tuple(complex(v) for v in row) for row in values["noise_covariance"])
    try:
        return RawHeader(**values)
    except TypeError as exc:
        raise WireProtocolError(f"malformed raw data header: {exc}") from None


def run_remote(client: Client, source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
               upload: bool = False, progress: Callable[[float, float, int], None] | None = None,
               reconstruct: bool = True, force: bool = False, run_timeout_s: float = 3600.0,
               patient_weight_kg: float | None = None, mode: str = "normal", prescan: bool = True) -> Any:
    """Run ``source`` on the server and write ``sequence.seq``, ``raw.h5``, the image and ``report.json``
    into ``out_dir`` through the same :class:`scanctl.engine.session.ScanSession` as an in-process run
    (:class:`RemotePort`). Takes control (and releases it). ``upload`` sends the file's content instead of
    its path. The server prescans first unless ``prescan`` is False (the report's ``prescan``, as in process).
    Returns the RunReport. Raises CommandError (e.g. another client has control),
    ServerTimeoutError (ServerLostError: it stopped answering during the run), OutputError (``out_dir`` is
    not new or empty, a file cannot be written)."""
    from scanctl.engine.session import ScanSession

    client.take_control(force=force)  # first: a refusal leaves nothing behind
    lost = False
    try:
        with RemotePort(client, upload=upload, run_timeout_s=run_timeout_s) as port:
            return ScanSession(port).scan(source, out_dir, reconstruct=reconstruct, progress=progress,
                                          patient_weight_kg=patient_weight_kg, mode=mode, prescan=prescan)
    except ServerLostError:
        lost = True  # nobody to give control back to: asking would only wait out the timeout, then warn
        raise
    finally:
        if not lost:
            try:
                client.release_control()
            except (CommandError, ServerTimeoutError) as exc:  # taken over meanwhile, or the server is gone
                log.warning("release_control: %s", exc)


class RemotePort:
    """The scanner behind the control server, as a :class:`scanctl.engine.session.ScannerPort`: ``load`` is the
    server's ``load`` (a refusal before anything moved is :class:`scanctl.engine.session.Refused`, told by the
    reply's ``outcome``, not its text); ``run`` is ``start``, then the run's data and events until its end.
    Subscribes (events and data, synchronised) on entering; the caller holds control. Ctrl-C during the run
    aborts it on the server (made safe) and takes what it acquired."""

    def __init__(self, client: Client, *, upload: bool = False, run_timeout_s: float = 3600.0) -> None:
        self.client = client
        self.upload = upload
        self.run_timeout_s = run_timeout_s
        self._sub: Subscription | None = None

    def __enter__(self) -> RemotePort:
        self._sub = self.client.subscribe(data=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sub is not None:
            if self._sub.gaps:
                log.error("events or data lost in transit: %s", self._sub.gaps)
            self._sub.close()
            self._sub = None

    def load(self, source: str | os.PathLike[str], *, name: str | None = None,
             patient_weight_kg: float | None = None, mode: str = "normal", prescan: bool = True) -> Any:
        from scanctl.engine.session import Loaded, Refused
        from scanctl.sequence.pulseq_read import parse

        source = Path(source)
        t0 = time.perf_counter()
        try:
            if self.upload:
                fmt = "seq" if source.suffix.lower() == ".seq" else "toml"
                loaded = self.client.load(text=source.read_text(encoding="utf-8"), format=fmt,
                                          name=name or source.name, patient_weight_kg=patient_weight_kg, mode=mode,
                                          prescan=prescan)
            else:
                loaded = self.client.load(source.resolve(), patient_weight_kg=patient_weight_kg, mode=mode,
                                          prescan=prescan)
        except CommandError as exc:
            if exc.body.get("outcome") == "refused":
                raise Refused(str(exc), {"protocol": {"source": str(source)},
                                         "safety": exc.body.get("safety") or {}}) from None
            raise
        text = loaded["sequence_text"].encode("utf-8")
        report = {key: loaded[key] for key in ("protocol", "sequence", "profile", "subsystems", "safety")}
        if loaded.get("prescan") is not None:  # what the server's prescan found before this scan (none: absent)
            report["prescan"] = loaded["prescan"]
        return Loaded(parse(text, path="sequence.seq"), text, header_from_plain(loaded["header"]), report,
                      loaded["check"], {"prepare_s": time.perf_counter() - t0})

    def run(self, sink: Callable[[AcquisitionBatch], None], progress: Callable[[float, float], None] | None) -> Any:
        from scanctl.engine.session import Ended

        sub = self._sub
        assert sub is not None, "enter the port first"
        run_id = self.client.start()["run"]
        failed = False

        def take(batch: AcquisitionBatch) -> None:
            """Into the sink; one that fails (the console's disk full) aborts the scan, as a local run stops,
            and the rest of the run is only read to its end (the server keeps its own copy)."""
            nonlocal failed
            if failed:
                return
            try:
                sink(batch)
            except ScanctlError as exc:
                failed = True
                log.error("run %s: the data cannot be kept here (%s): aborting the scan", run_id, exc)
                with contextlib.suppress(CommandError, ServerTimeoutError):
                    self.client.abort()

        try:
            end = _receive_run(sub, run_id, take, progress, self.run_timeout_s, self.client.status)
        except KeyboardInterrupt:  # Ctrl-C: the scan is aborted (made safe), what it acquired is kept
            log.warning("interrupted: aborting run %s", run_id)
            with contextlib.suppress(CommandError):  # (it may have ended meanwhile)
                self.client.abort()
            end = _receive_run(sub, run_id, take, None, 60.0, self.client.status)
        timings = {k: v for k, v in end["timings"].items() if k in ("scan_wall_s", "real_time_factor")}
        return Ended(end["outcome"], end["message"], end["acquisitions"], end["scan_time_s"], end["duration_s"],
                     end["segments"], end["telemetry"], end["journal"], timings, run_id)


#: How often a console holding control during a run sends a command (``status``) so that its control does
#: not lapse (the server's ``control_timeout_s``, 30 s by default).
KEEPALIVE_S = 5.0


def _receive_run(sub: Subscription, run_id: str, sink: Callable[[AcquisitionBatch], None],
                 progress: Callable[[float, float], None] | None, timeout_s: float,
                 keepalive: Callable[[], Any]) -> dict[str, Any]:
    """Give ``sink`` the run's data until both the run's end event and the end of its data stream have
    arrived, calling ``keepalive`` (a command: control does not lapse) every :data:`KEEPALIVE_S`. Returns
    the end event's body."""
    end: dict[str, Any] | None = None
    data_done = False
    deadline = time.monotonic() + timeout_s
    next_keepalive = time.monotonic() + KEEPALIVE_S
    while end is None or not data_done:
        now = time.monotonic()
        if now >= next_keepalive:
            try:
                keepalive()
            except ServerTimeoutError:
                raise ServerLostError(run_id) from None
            next_keepalive = now + KEEPALIVE_S
        msg = sub.recv(max(0.0, min(deadline, next_keepalive) - time.monotonic()))
        if msg is None:
            if time.monotonic() < deadline:
                continue
            raise ServerTimeoutError(f"run {run_id} did not end within {timeout_s:g} s")
        if msg.run != run_id:
            continue
        if msg.stream == "data":
            if msg.body.get("end"):
                data_done = True
            else:
                sink(acquisitions_of(msg))
        elif msg.stream == "progress" and progress is not None:
            progress(float(msg.body["t_s"]), float(msg.body["total_s"]))
        elif msg.stream == "run" and msg.body.get("event") == "end":
            end = msg.body
    return end
