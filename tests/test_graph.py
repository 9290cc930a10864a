"""The phase graph's RF rotation (simulators/physics/graph.py): the blocked gather of PhaseGraph.rotate
against the whole-array expression it replaced."""

from __future__ import annotations

import numpy as np
import pytest
from scanctl.simulators.physics import graph as graph_mod
from scanctl.simulators.physics.graph import AMPLITUDE, AMPLITUDE_REAL, PhaseGraph, signal_weight


def _whole_array(f: np.ndarray, z: np.ndarray, rows: list[np.ndarray], coefficients: tuple) -> tuple:
    """The rotation as one expression over whole arrays (graph.py before the blocks)."""
    a, b, c, half_d, e = coefficients
    f_ext = np.concatenate((f, np.zeros((1, *f.shape[1:]), f.dtype)))
    z_ext = np.concatenate((z, np.zeros((1, *z.shape[1:]), z.dtype)))
    f_u, z_u, conj_u = f_ext[rows[0]], z_ext[rows[2]], np.conj(f_ext[rows[1]])
    new_f = a * f_u
    new_f += b * conj_u
    new_f += c * z_u
    new_z = e * z_u
    new_z += half_d * f_u
    new_z += np.conj(half_d) * conj_u
    return new_f, new_z


@pytest.mark.parametrize(("n_classes", "n_iso"), [(279, 1), (7, 4)])
@pytest.mark.parametrize("block_rows", [1, 3, 64, 10_000])
def test_blocked_rotation_is_the_whole_array_rotation_bit_for_bit(n_classes: int, n_iso: int, block_rows: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of any size (one row, a ragged last block, one block for all) give the new F and Z of the
    whole-array expression exactly, merged states with no state of a kind included, and their signal
    weights are signal_weight's."""
    rng = np.random.default_rng(n_classes * block_rows)
    n_f, n_z, n_u = 40, 35, 90

    def amplitudes(n: int) -> np.ndarray:
        return (rng.standard_normal((n, n_classes, n_iso)) + 1j * rng.standard_normal((n, n_classes, n_iso))).astype(
            AMPLITUDE)

    f, z = amplitudes(n_f), amplitudes(n_z)
    rows = []
    for n in (n_f, n_f, n_z):  # each kind lands on distinct merged states; the rest point at the zero row
        r = np.full(n_u, n, np.intp)
        r[rng.choice(n_u, n, replace=False)] = np.arange(n)
        rows.append(r)
    coefficients = tuple(amplitudes(1)[0] for _ in range(4)) + (
        rng.standard_normal((n_classes, n_iso)).astype(AMPLITUDE_REAL),)
    monkeypatch.setattr(graph_mod, "_ROTATE_BLOCK_BYTES", block_rows * f.itemsize * n_classes * n_iso)
    new_f, new_z, mag_f, mag_z = graph_mod._gather_rotate(f, z, rows, coefficients)
    want_f, want_z = _whole_array(f, z, rows, coefficients)
    assert new_f.dtype == want_f.dtype == AMPLITUDE
    assert np.array_equal(new_f, want_f) and np.array_equal(new_z, want_z)
    assert np.array_equal(mag_f, signal_weight(want_f)) and np.array_equal(mag_z, signal_weight(want_z))


def test_rotate_prunes_by_the_blocked_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph rotated with small blocks keeps the same states, amplitudes and moments as with one block."""
    results = []
    for block_rows in (2, 10_000):
        monkeypatch.setattr(graph_mod, "_ROTATE_BLOCK_BYTES", block_rows * 5 * np.dtype(AMPLITUDE).itemsize)
        rng = np.random.default_rng(1)
        g = PhaseGraph(5, 1, max_states=20)
        g.f_k = rng.uniform(-100.0, 100.0, (30, 3))
        g.f_tau = np.zeros(30)
        g.f = (rng.standard_normal((30, 5, 1)) * 10.0 ** rng.uniform(-7, 0, (30, 1, 1))).astype(AMPLITUDE)
        angle = np.full((5, 1), 0.3)
        g.rotate((np.cos(angle) + 0j), 0.1j * np.ones((5, 1)), np.sin(angle) + 0j, -np.sin(angle) + 0j,
                 np.cos(angle))
        results.append((g.f_k, g.f, g.z_k, g.z))
    assert results[0][1].shape[0] == 20  # max_states: the weights chose which
    for one, other in zip(*results, strict=True):
        assert np.array_equal(one, other)
