"""Fixtures: synthetic frames (see :mod:`tests.dataset.synthetic`)."""

from __future__ import annotations

import pytest

from tests.dataset.synthetic import synthetic_frames


@pytest.fixture
def frames():
    """Thirty mixed frames (3D, 0D, 2D) with baseline energies, no DOS."""
    return synthetic_frames(30)


@pytest.fixture
def dos_frames():
    """Twelve mixed frames with a 40-point DOS whose tail is masked (NaN)."""
    return synthetic_frames(12, seed=1, dos_points=40)


@pytest.fixture
def make_frames():
    """The frame factory itself: ``make_frames(count, seed, subsets=..., dos_points=...)``."""
    return synthetic_frames
