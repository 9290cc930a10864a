"""A local Orthanc (the Debian package ``orthanc``) as the PACS: started with a configuration of its own in
a directory we name, on loopback ports, and stopped again (docs/dicom.md).

``with Orthanc(workdir) as pacs:`` writes ``workdir/orthanc.json`` (storage in ``workdir/storage``, no
plugins, HTTP on 127.0.0.1 only, the DICOM port checking the called AE title), starts ``Orthanc``, waits
for its REST API, and stops it (SIGTERM, then SIGKILL) on leaving. ``Orthanc(workdir, worklists=DIR)``
also loads the ModalityWorklists plugin, which answers Modality Worklist C-FINDs from the ``.wl`` files in
``DIR`` (:func:`scanctl.data.worklist.write_worklist`). ``scanctl pacs serve DIR`` runs one in the
foreground. Errors: :class:`OrthancError` (a :class:`~scanctl.errors.ScanctlError`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from scanctl.data.pacs import Pacs
from scanctl.errors import ScanctlError

log = logging.getLogger(__name__)

#: The executable the Debian package installs.
EXECUTABLE = "Orthanc"
#: The Debian package's Modality Worklist plugin (orthanc 1.10).
WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
#: How long Orthanc may take to answer its REST API after start (s); it creates its database first.
START_TIMEOUT_S = 30.0


class OrthancError(ScanctlError):
    """Orthanc is not installed, does not start, or its REST API does not answer as expected."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's choice; another process could take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc process with its configuration and storage under ``workdir`` (created if missing).

    ``aet``: its AE title (the called AE title is checked; any calling AE title may store:
    ``DicomAlwaysAllowStore``); ``dicom_port``/``http_port``: 0 picks free ones; ``worklists``: a folder
    of ``.wl`` files to serve as the Modality Worklist (None: no worklist)."""

    def __init__(self, workdir: str | os.PathLike[str], *, aet: str = "ORTHANC", dicom_port: int = 0,
                 http_port: int = 0, host: str = "127.0.0.1",
                 worklists: str | os.PathLike[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.worklists = Path(worklists).resolve() if worklists is not None else None
        self.aet = aet
        self.host = host
        self.dicom_port = dicom_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pacs(self) -> Pacs:
        """Its DICOM address."""
        return Pacs(self.aet, self.host, self.dicom_port)

    @property
    def url(self) -> str:
        """Its REST API's base URL."""
        return f"http://{self.host}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The configuration written as ``orthanc.json``."""
        storage = self.workdir / "storage"
        config: dict[str, Any] = {
            "Name": f"scanctl-{self.aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [],  # not the Debian package's plugin directory: a PACS, nothing else
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # REST on loopback only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,  # a store to the wrong AE title is refused, as a hospital PACS does
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,  # any calling AE title may C-FIND: a store is verified that way (pacs.py)
            "DicomModalities": {},
            "StorageCompression": False,
            "ConcurrentJobs": 1,
        }
        if self.worklists is not None:
            config["Plugins"] = [str(WORKLIST_PLUGIN)]
            config["Worklists"] = {"Enable": True, "Database": str(self.worklists)}
            # any calling AE title may query the worklist, as it may store (Orthanc 1.10 asks for both)
            config["DicomAlwaysAllowFindWorklist"] = True
        return config

    def start(self) -> Orthanc:
        """Write the configuration and start Orthanc; returns once its REST API answers and its DICOM port
        accepts connections. Raises OrthancError (not installed, exited, or no answer within START_TIMEOUT_S:
        its log's last lines say why)."""
        # Debian installs it in /usr/sbin, which is not on a user's PATH
        exe = shutil.which(EXECUTABLE) or shutil.which(EXECUTABLE, path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            raise OrthancError(f"{EXECUTABLE} is not installed (Debian: apt-get install orthanc; ./setup-env does it "
                               f"as root)")
        if self.worklists is not None:
            if not WORKLIST_PLUGIN.is_file():
                raise OrthancError(f"{WORKLIST_PLUGIN}: no Modality Worklist plugin (Debian package orthanc)")
            if not self.worklists.is_dir():
                raise OrthancError(f"worklist folder {self.worklists} does not exist")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        logfile = self.workdir / "orthanc.log"
        with logfile.open("ab") as out:
            self.process = subprocess.Popen([exe, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode} at start: {self._log_tail()}")
            with contextlib.suppress(OrthancError, OSError):
                self.rest("/system")
                # Its DICOM port may open a moment after the REST API: a first association would fail.
                socket.create_connection((self.host, self.dicom_port), timeout=1.0).close()
                log.info("orthanc: %s up, REST %s (%s)", self.pacs, self.url, self.workdir)
                return self
            time.sleep(0.1)
        self.stop()
        raise OrthancError(f"Orthanc did not answer on {self.url} within {START_TIMEOUT_S:g} s: {self._log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM; SIGKILL after 10 s). Safe to call twice."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self) -> str:
        try:
            lines = (self.workdir / "orthanc.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    # -- REST ---------------------------------------------------------------------------------------------
    def rest(self, path: str, body: bytes | None = None) -> Any:
        """GET (or POST ``body`` to) ``path`` of the REST API: the JSON answer, or the bytes when not JSON.
        Raises OrthancError naming the URL."""
        url = self.url + path
        request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                data: bytes = answer.read()
                kind = answer.headers.get("Content-Type", "")
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancError(f"{url}: {getattr(exc, 'reason', exc)}") from exc
        return json.loads(data) if kind.startswith("application/json") else data

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The DICOM file Orthanc holds for ``sop_instance_uid``. Raises OrthancError if it has none."""
        found = self.rest("/tools/lookup", sop_instance_uid.encode())
        ids = [f["ID"] for f in found if f.get("Type") == "Instance"]
        if not ids:
            raise OrthancError(f"Orthanc {self.pacs} holds no instance {sop_instance_uid}")
        file: bytes = self.rest(f"/instances/{ids[0]}/file")
        return file


__all__ = ["EXECUTABLE", "WORKLIST_PLUGIN", "Orthanc", "OrthancError", "free_port"]
