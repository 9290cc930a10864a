"""Slice geometry: orientations, patient positions, quaternions and slice stacks (scanctl.sequence.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanctl.sequence.geometry import (
    GeometryError,
    Orientation,
    SliceStack,
    matrix_to_quaternion,
    patient_to_scanner,
    quaternion_to_matrix,
)

finite = st.floats(-1.0, 1.0, allow_nan=False)
normals = st.tuples(finite, finite, finite).filter(lambda v: np.linalg.norm(v) > 1e-3)


def test_base_orientations_are_dicoms():
    # DICOM Image Orientation (Patient): row (read) then column (phase) direction cosines.
    assert np.allclose(Orientation.named("transverse").matrix, np.eye(3))
    sag = Orientation.named("sagittal")
    assert np.allclose(np.r_[sag.read, sag.phase], [0, 1, 0, 0, 0, -1])
    assert np.allclose(sag.slice, [-1, 0, 0])
    cor = Orientation.named("coronal")
    assert np.allclose(np.r_[cor.read, cor.phase], [1, 0, 0, 0, 0, -1])
    assert np.allclose(cor.slice, [0, 1, 0])


@given(normals, st.floats(-360, 360, allow_nan=False))
def test_an_oblique_is_a_proper_rotation_with_the_given_normal(normal, rot):
    o = Orientation.from_normal(normal, rot)
    m = o.matrix
    assert np.allclose(m.T @ m, np.eye(3), atol=1e-9)
    assert np.linalg.det(m) == pytest.approx(1.0)
    assert np.allclose(o.slice, np.asarray(normal) / np.linalg.norm(normal), atol=1e-9)


@pytest.mark.parametrize("name", ["transverse", "sagittal", "coronal"])
def test_a_normal_along_a_base_gives_that_base(name):
    base = Orientation.named(name)
    assert np.allclose(Orientation.from_normal(base.slice).matrix, base.matrix)


def test_inplane_rotation_turns_read_toward_phase():
    o = Orientation.from_normal([0, 0, 1], 90.0)
    assert np.allclose(o.read, [0, 1, 0]) and np.allclose(o.phase, [-1, 0, 0])


@given(normals, st.floats(-180, 180, allow_nan=False), st.sampled_from(["HFS", "FFS", "HFP", "FFP"]))
def test_quaternion_round_trip(normal, rot, position):
    m = Orientation.from_normal(normal, rot).in_scanner(position)
    q = matrix_to_quaternion(m)
    assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
    assert np.allclose(quaternion_to_matrix(q), m, atol=1e-9)


def test_patient_positions_turn_the_patient():
    head = np.array([0.0, 0.0, 1.0])  # toward the patient's head
    assert (patient_to_scanner("HFS") @ head)[2] == 1.0
    assert (patient_to_scanner("FFS") @ head)[2] == -1.0
    left = np.array([1.0, 0.0, 0.0])
    assert (patient_to_scanner("HFP") @ left)[0] == -1.0
    for p in ("HFS", "FFS", "HFP", "FFP"):
        assert np.linalg.det(patient_to_scanner(p)) == pytest.approx(1.0)  # a turn, never a mirror
    with pytest.raises(GeometryError, match="patient_position"):
        patient_to_scanner("XYZ")


def test_slice_stack_positions_and_orders():
    stack = SliceStack(np.array([0.0, 0.0, 0.01]), Orientation.named("transverse"), count=5,
                       thickness_m=0.004, gap_m=0.001)
    assert np.allclose(stack.centres_m()[:, 2], [0.0, 0.005, 0.01, 0.015, 0.02])
    assert stack.acquisition_order() == [0, 2, 4, 1, 3]
    def order(count: int, name: str) -> list[int]:
        return SliceStack(stack.centre_m, stack.orientation, count=count, order=name).acquisition_order()
    assert order(4, "sequential") == [0, 1, 2, 3]
    assert order(3, "descending") == [2, 1, 0]


def test_logical_offsets_follow_the_orientation():
    sag = Orientation.named("sagittal")
    stack = SliceStack(np.array([0.02, 0.0, 0.03]), sag)
    read, phase, slc = stack.logical_offsets_m()[0]
    assert (read, phase, slc) == pytest.approx((0.0, -0.03, -0.02))


def test_corners_span_the_fov():
    stack = SliceStack(np.zeros(3), Orientation.named("transverse"), thickness_m=0.01)
    corners = stack.extent_corners_m(0.2, 0.1)
    assert np.allclose(corners.max(axis=0), [0.1, 0.05, 0.005])


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"count": 3, "gap_m": -0.001}, "slice_gap_mm"),
    ({"count": 0}, "slices"),
    ({"order": "random"}, "slice_order"),
    ({"thickness_m": 0.0}, "slice_thickness_m"),
])
def test_bad_stacks_name_the_key(kwargs, key):
    with pytest.raises(GeometryError, match=key):
        SliceStack(np.zeros(3), Orientation.named("transverse"), **kwargs)


def test_bad_orientations_name_the_key():
    with pytest.raises(GeometryError, match="normal"):
        Orientation.from_normal([0, 0, 0])
    with pytest.raises(GeometryError, match="unknown 'axial'"):
        Orientation.named("axial")
    with pytest.raises(GeometryError, match="perpendicular"):
        Orientation(np.array([1.0, 0, 0]), np.array([1.0, 0, 0]))
    with pytest.raises(GeometryError, match="proper rotation"):
        matrix_to_quaternion(np.diag([1.0, 1.0, -1.0]))
