"""Synthetic frames of the frame model, shared by the tests of the dataset format and of the exports."""

from __future__ import annotations

import uuid as uuid_module

import numpy as np

from aiida_mad.dataset.frames import make_frame

FINGERPRINT = 'f' * 8 + '0123456789abcdef' * 3 + 'a' * 8


def synthetic_frames(count: int, seed: int = 0, *, subsets=('mc3d', 'mc3d-cluster', 'mc2d'), dos_points: int = 0):
    """Return ``count`` valid frames cycling through 3D, 0D and 2D subsets, with uuid4-like source uuids."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        subset = subsets[index % len(subsets)]
        natoms = int(rng.integers(2, 9))
        if subset == 'mc3d-cluster':
            pbc = (False, False, False)
            cell = np.diag([25.0 + rng.uniform(0, 3)] * 3)
        elif subset == 'mc2d':
            pbc = (True, True, False)
            cell = np.array([[3.1, 0.0, 0.0], [-1.55, 2.68467, 0.0], [0.0, 0.0, 28.0]]) * rng.uniform(0.95, 1.05)
        else:
            pbc = (True, True, True)
            cell = np.diag(rng.uniform(3.0, 7.0, 3)) + rng.normal(0.0, 0.3, (3, 3))
        stress = None
        if any(pbc):
            matrix = rng.normal(0.0, 0.01, (3, 3))
            stress = matrix + matrix.T
        dos = None
        if dos_points:
            dos = rng.uniform(0.0, 5.0, dos_points)
            dos[-int(rng.integers(1, max(2, dos_points // 4))) :] = np.nan
        energy = float(rng.normal(-100.0, 50.0))
        frames.append(
            make_frame(
                rng.integers(1, 87, natoms),
                rng.uniform(0.0, 5.0, (natoms, 3)),
                cell=cell,
                pbc=pbc,
                energy=energy,
                energy_baseline_subtracted=energy + float(rng.normal(90.0, 5.0)),
                forces=rng.normal(0.0, 1.0, (natoms, 3)),
                stress=stress,
                subset=subset,
                split=('train', 'val', 'test')[index % 3],
                source_uuid=str(uuid_module.UUID(int=int(rng.integers(0, 2**63)) << 64 | index, version=4)),
                fingerprint=FINGERPRINT,
                dos=dos,
            )
        )
    return frames
