"""Suite-wide settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _server_runs_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Control servers started by the tests (in-process or as processes, which inherit the environment)
    keep their copies of runs in a temporary folder, not in the user's data folder."""
    os.environ["SCANCTL_DATA_DIR"] = str(tmp_path_factory.mktemp("server-runs"))
