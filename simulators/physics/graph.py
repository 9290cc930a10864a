"""The magnetization as a phase graph: dephasing states with amplitudes per tissue class and isochromat.

The magnetization of a spin at ``r`` in a voxel of tissue class ``c``, at isochromat ``s`` (a position
through the slab of a 2D phantom), is

    Mxy(r) = Σ_j F_j[c, s] exp(2πi (k_j·r + δf(r) τ_j))
    Mz(r)  = Σ_j Z_j[c, s] exp(2πi (k_j·r + δf(r) τ_j))

over dephasing states ``j`` with gradient moment ``k_j`` (1/m) and dephasing time ``τ_j`` (s; ``δf`` is
the voxel's off-resonance relative to its class). This is the phase distribution graph of MRzero (Endres
et al., MRM 2024), the continuous-moment generalisation of the extended phase graph (Weigel, JMRI 2015):

* a gradient moves every transverse state ``k -> k + Δm`` and time ``τ -> τ + dt``, exactly, whatever the
  moment; longitudinal states stay put;
* an RF rotation mixes the state at ``(k, τ)`` with the conjugate of the one at ``(-k, -τ)`` and the
  longitudinal state at ``(k, τ)``, so no new moments appear; states at equal (quantised) ``(k, τ)`` are
  merged and states whose amplitude falls below a threshold are dropped (they would only return through
  echoes weaker than that);
* relaxation and class off-resonance scale the amplitudes per class.

The amplitudes are shared by all voxels of a class, so the work does not grow with the number of voxels:
the voxel positions only enter when a signal is computed (``bloch.py``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Moments closer than this (1/m) are one state: a phase error below 2π·5e-4·r, 4e-4 rad at r = 12.8 cm.
MOMENT_QUANTUM = 1e-3
#: Dephasing times closer than this (s) are one state.
TIME_QUANTUM = 1e-9


class PhaseGraph:
    """Transverse (``F``) and longitudinal (``Z``) states, amplitudes of shape ``(states, classes, isochromats)``.

    ``tolerance``: states whose largest amplitude (relative to equilibrium magnetization 1) is below it
    are dropped; ``max_states``: the most transverse and the most longitudinal states kept (the largest).
    ``track_time``: keep states with equal moment but different dephasing time apart (needed only when
    off-resonance varies inside a class).
    """

    def __init__(self, n_classes: int, n_iso: int, *, tolerance: float = 1e-6, max_states: int = 20000,
                 track_time: bool = False) -> None:
        self.shape = (n_classes, n_iso)
        self.tolerance = tolerance
        self.max_states = max_states
        self.track_time = track_time
        self.reset()

    def reset(self) -> None:
        """Equilibrium: one longitudinal state at ``k = 0``, amplitude 1."""
        c, s = self.shape
        self.f_k = np.zeros((0, 3))
        self.f_tau = np.zeros(0)
        self.f = np.zeros((0, c, s), np.complex128)
        self.z_k = np.zeros((1, 3))
        self.z_tau = np.zeros(1)
        self.z = np.ones((1, c, s), np.complex128)

    @property
    def n_states(self) -> int:
        return int(self.f.shape[0] + self.z.shape[0])

    def split(self, parent: npt.NDArray[np.intp]) -> None:
        """Make new classes, class ``i`` starting with the amplitudes of old class ``parent[i]``."""
        self.f = np.ascontiguousarray(self.f[:, parent])
        self.z = np.ascontiguousarray(self.z[:, parent])
        self.shape = (int(parent.size), self.shape[1])

    def evolve(self, dm: FloatArray, dt: float, transverse: ComplexArray, e1: FloatArray) -> None:
        """Free evolution: moment ``dm`` (3,), time ``dt``; ``transverse`` (per class) multiplies the
        transverse amplitudes (relaxation and class off-resonance), ``e1`` (per class) the longitudinal
        ones, which recover towards 1 at ``k = 0``."""
        if self.f.shape[0]:
            self.f_k += dm
            self.f_tau += dt
            self.f *= transverse[None, :, None]
        if dt > 0:
            self.z *= e1[None, :, None]
            self.z[0] += (1.0 - e1)[:, None]  # state 0 is always the k = 0, τ = 0 one

    def rotate(self, a: ComplexArray, b: ComplexArray, c: ComplexArray, d: ComplexArray, e: FloatArray) -> None:
        """Apply a rotation given per ``(class, isochromat)`` by its coefficients
        (``Mxy' = a Mxy + b conj(Mxy) + c Mz``, ``Mz' = Re(d Mxy) + e Mz``)."""
        n_f, n_z = self.f.shape[0], self.z.shape[0]
        k_all = np.concatenate((self.f_k, -self.f_k, self.z_k))
        tau_all = np.concatenate((self.f_tau, -self.f_tau, self.z_tau))
        keys = np.empty((k_all.shape[0], 4), np.int64)
        keys[:, :3] = np.round(k_all / MOMENT_QUANTUM)
        keys[:, 3] = np.round(tau_all / TIME_QUANTUM) if self.track_time else 0
        uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        n_u = uniq.shape[0]
        shape = (n_u, *self.shape)
        i_z = inverse[2 * n_f:]
        k_u, tau_u = k_all[first], tau_all[first]
        if not self.track_time:
            tau_u = np.zeros(n_u)
        # Sum every product into its merged state. Two states of one kind can land on one key (moments
        # that straddled a rounding boundary and moved onto one quantum), so contributions are summed
        # per key (a fancy-index ``+=`` would keep only one of the repeated indices).
        if n_f:
            conj_f = np.conj(self.f)  # conj(F at -k), placed at k
            half_d = 0.5 * d
            # inverse holds the keys of F, conj(F) at -k and Z, in that order
            new_f = _sum_by_key(inverse, (a * self.f, b * conj_f, c * self.z), shape)
            new_z = _sum_by_key(inverse, (half_d * self.f, np.conj(half_d) * conj_f, e * self.z), shape)
        else:
            new_f = _sum_by_key(i_z, (c * self.z,), shape)
            new_z = _sum_by_key(i_z, (e * self.z,), shape)

        zero = int(inverse[2 * n_f]) if n_z else -1  # where the k = 0 longitudinal state went
        self.f_k, self.f_tau, self.f = self._prune(k_u, tau_u, new_f, keep=-1)
        self.z_k, self.z_tau, self.z = self._prune(k_u, tau_u, new_z, keep=zero)

    def _prune(self, k: FloatArray, tau: FloatArray, amp: ComplexArray, keep: int) -> tuple[
            FloatArray, FloatArray, ComplexArray]:
        """Drop weak states (keeping state ``keep`` first, if >= 0) and cap the count."""
        mag = np.abs(amp).reshape(amp.shape[0], -1).max(axis=1)
        idx = np.flatnonzero(mag > self.tolerance)
        if keep >= 0:
            idx = np.concatenate(([keep], idx[idx != keep]))
        if idx.size > self.max_states:
            head = idx[:1] if keep >= 0 else idx[:0]
            rest = idx[head.size:]
            rest = rest[np.argsort(mag[rest])[::-1][: self.max_states - head.size]]
            idx = np.concatenate((head, np.sort(rest)))
        return k[idx], tau[idx], amp[idx]


def _sum_by_key(index: npt.NDArray[np.intp], parts: tuple[ComplexArray, ...], shape: tuple[int, ...]) -> ComplexArray:
    """``out[index[i]] += values[i]`` over the rows of ``parts`` stacked in order, repeated keys summed;
    ``out`` has ``shape`` (keys without a contribution stay 0)."""
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    rows = np.argsort(index, kind="stable")
    out = np.zeros(shape, np.complex128)
    # Each pass adds the first remaining row of every key (so no key repeats within one fancy-index +=) and
    # drops it: as many passes as the most rows on one key. The additions are those reduceat would make, in
    # its order (bit for bit the same), but np.add.reduceat along the first axis of 3-D arrays is slow:
    # tse_2d's physics 10.3 -> 6.1 s CPU.
    while rows.size:
        keys = index[rows]
        first = np.concatenate(([True], keys[1:] != keys[:-1]))
        out[keys[first]] += values[rows[first]]
        rows = rows[~first]
    return out
