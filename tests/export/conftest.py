"""Fixtures of the export tests: the synthetic frames of the dataset-format tests (:mod:`tests.dataset.conftest`)."""

from tests.dataset.conftest import dos_frames, frames, make_frames

__all__ = ('dos_frames', 'frames', 'make_frames')
