"""CurveZMQ over real sockets: a server (or driver service) with keys admits only the allowed client keys;
a client with an unknown key, or without CURVE, gets no answer; a network bind without keys refuses to
start unless insecure. CURVE is enabled explicitly on loopback here (no other interface may exist)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanctl.cli import main
from scanctl.config import profile as profiles
from scanctl.errors import ConfigError, DriverTimeoutError
from scanctl.hw.registry import open_subsystem
from scanctl.services.client import Client, CommandError, ServerTimeoutError
from scanctl.services.driver_service import DriverService
from scanctl.services.server import ControlServer
from scanctl.transport.security import ClientCurve, ServerCurve, generate

PROFILE = profiles.load()
LOOPBACK = "tcp://127.0.0.1:0"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server/ (server pair), allow/ (console's public key), console/ (console pair + server.key),
    stranger/ (a pair the server does not know + server.key)."""
    server_dir, allow, console, stranger = (tmp_path / n for n in ("server", "allow", "console", "stranger"))
    generate(server_dir, "server")
    public, _ = generate(console, "client")
    generate(stranger, "client")
    allow.mkdir()
    (allow / "console.key").write_bytes(public.read_bytes())
    for d in (console, stranger):
        (d / "server.key").write_bytes((server_dir / "server.key").read_bytes())
    return {"server": server_dir, "allow": allow, "console": console, "stranger": stranger}


class Served:
    def __init__(self, curve: ServerCurve | None, **kwargs: Any) -> None:
        self.server = ControlServer(PROFILE, LOOPBACK, LOOPBACK, LOOPBACK, {"rf": "sim://?physics=0"},
                                    curve=curve, **kwargs)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = self.server.endpoints["control"]

    def close(self) -> None:
        self.server.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def curve_server(keys: dict[str, Path]) -> Iterator[Served]:
    s = Served(ServerCurve.load(keys["server"], keys["allow"]))
    yield s
    s.close()


def test_keys_generate_writes_a_zmq_auth_pair_and_never_overwrites(tmp_path, capsys):
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "console"]) == 0
    public, secret = tmp_path / "k" / "console.key", tmp_path / "k" / "console.key_secret"
    assert public.exists() and secret.exists() and (secret.stat().st_mode & 0o077) == 0
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    loaded = ServerCurve.load(secret, tmp_path / "k")  # the dir holds console.key: a valid allow dir too
    assert len(loaded.public_key) == 40 and len(loaded.secret_key) == 40
    assert main(["keys", "generate", str(tmp_path / "k"), "--name", "console"]) == 2
    assert "not overwriting" in capsys.readouterr().err


def test_an_allowed_client_commands_and_subscribes_over_curve(curve_server, keys):
    with Client(curve_server.endpoint, keys=ClientCurve.load(keys["console"])) as client:
        assert client.status()["state"] in ("IDLE", "CONNECTING", "DISCONNECTED")
        client.take_control()
        with client.subscribe() as events:  # the event socket requires CURVE too
            client.release_control()
            assert any(m.body.get("controller") is None for m in events if m.stream == "control")


def test_with_keys_control_is_held_by_name_and_key(keys, tmp_path):
    """Over CURVE a console is known by its name and its key: another allowed console that sends the
    controller's name cannot command in its place."""
    other = tmp_path / "other"
    public, _ = generate(other, "client")
    (keys["allow"] / "other.key").write_bytes(public.read_bytes())
    (other / "server.key").write_bytes((keys["server"] / "server.key").read_bytes())
    served = Served(ServerCurve.load(keys["server"], keys["allow"]))
    try:
        with Client(served.endpoint, name="console", keys=ClientCurve.load(keys["console"])) as owner, \
                Client(served.endpoint, name="console", keys=ClientCurve.load(other)) as copycat:
            holder = owner.take_control()["controller"]
            assert holder.startswith("console@") and len(holder) == len("console@") + 8
            with pytest.raises(CommandError, match="has control") as refused:
                copycat.abort()
            assert refused.value.code == "not_controller"
            assert copycat.status()["controller"] == holder
            assert owner.release_control()["controller"] is None  # the owner still commands
    finally:
        served.close()


def test_a_client_with_an_unknown_key_is_refused(curve_server, keys):
    stranger = ClientCurve.load(keys["stranger"])
    with Client(curve_server.endpoint, keys=stranger, timeout_s=0.5, retries=0) as c, pytest.raises(ServerTimeoutError):
        c.status()


def test_a_client_without_curve_is_refused(curve_server):
    with Client(curve_server.endpoint, timeout_s=0.5, retries=0) as c, pytest.raises(ServerTimeoutError):
        c.status()


def test_cli_verbs_take_client_keys(curve_server, keys, capsys):
    assert main(["status", "--connect", curve_server.endpoint, "--keys", str(keys["console"]), "--json"]) == 0
    assert '"state"' in capsys.readouterr().out
    named = ["--connect", curve_server.endpoint, "--keys", str(keys["console"]), "--name", "rig"]
    assert main(["take-control", *named]) == 0
    assert main(["move-table", *named, "10"]) == 0  # held as rig@KEY: the verb keeps it
    with Client(curve_server.endpoint, keys=ClientCurve.load(keys["console"])) as watcher:
        assert watcher.status()["controller"].startswith("rig@")
    assert main(["release-control", *named]) == 0
    assert main(["status", "--connect", curve_server.endpoint, "--timeout", "0.5"]) == 2
    assert "no answer" in capsys.readouterr().err


def test_a_network_bind_without_keys_refuses_to_start_unless_insecure(keys, capsys):
    with pytest.raises(ConfigError, match="not a loopback address.*--insecure"):
        ControlServer(PROFILE, "tcp://0.0.0.0:0", LOOPBACK)
    assert main(["serve", "--bind", "tcp://0.0.0.0:0", "--events", LOOPBACK, "--data", LOOPBACK]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--insecure" in err and "--keys" in err
    assert main(["driver", "serve", "gradient", "--bind", "tcp://0.0.0.0:*"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    # With keys, or insecure, it starts.
    for kwargs in ({"curve": ServerCurve.load(keys["server"], keys["allow"])}, {"insecure": True}):
        s = Served(None, **kwargs) if "insecure" in kwargs else None
        if s is None:
            server = ControlServer(PROFILE, "tcp://0.0.0.0:0", LOOPBACK, LOOPBACK, **kwargs)
            server._close_sockets()
            server._wake.close()
        else:
            s.close()


def test_server_keys_need_an_allow_directory_with_keys(keys, tmp_path):
    with pytest.raises(ConfigError, match="--allow"):
        ServerCurve.load(keys["server"], None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no client public keys"):
        ServerCurve.load(keys["server"], tmp_path / "empty")
    with pytest.raises(ConfigError, match="server's public key is missing"):
        ClientCurve.load(keys["server"] / "server.key_secret", tmp_path / "nowhere.key")


def test_a_driver_service_with_keys_admits_only_allowed_proxies(keys):
    gradient = open_subsystem("gradient", "sim://", PROFILE)
    service = DriverService("gradient", gradient, "tcp://127.0.0.1:*",
                            curve=ServerCurve.load(keys["server"], keys["allow"]))
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"{service.endpoint}?liveness_s=0.3&keys={keys['console']}"
        allowed = open_subsystem("gradient", url, PROFILE)
        allowed.connect()
        assert allowed.status().state.name == "STANDBY"
        allowed.close()
        for url in (f"{service.endpoint}?liveness_s=0.3&keys={keys['stranger']}", f"{service.endpoint}?liveness_s=0.3"):
            refused = open_subsystem("gradient", url, PROFILE)
            assert type(refused).__name__ == "ProxyGradient"
            with pytest.raises(DriverTimeoutError):
                refused.connect(timeout_s=0.5)
            refused.close()
    finally:
        service.stop()
        thread.join(timeout=10)
    with pytest.raises(ConfigError, match="not a loopback address"):
        DriverService("gradient", gradient, "tcp://0.0.0.0:*")
