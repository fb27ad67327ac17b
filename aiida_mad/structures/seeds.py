"""Small bundled seed structures, built in code, for demos and tests when no MC3D/MC2D/ShiftML import is at hand.

Nothing is downloaded or read from files: every structure comes from textbook lattice parameters through ASE, so
the seeds are the same on every machine. Each call returns fresh ``Atoms`` objects that the caller may modify.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, graphene, molecule
from ase.spacegroup import crystal

__all__ = ('SEED_SOURCES', 'all_seeds', 'bulk_seeds', 'molecular_crystal_seeds', 'molecule_seeds', 'two_d_seeds')

#: Source names of the bundled seeds, the keys of :func:`all_seeds`.
SEED_SOURCES: tuple[str, ...] = ('bulk', '2d', 'molcrys', 'molecules')

#: Total vacuum (Å) along z of the 2D seed: the length of its non-periodic cell vector.
TWO_D_VACUUM = 20.0

#: Å added to the extent of a molecule along x, y and z to make its box (as for clusters; DFT sets the vacuum).
MOLECULE_PADDING = 10.0

#: Molecules of :func:`molecule_seeds`, by their name in ``ase.build.molecule``.
MOLECULES: tuple[str, ...] = ('H2O', 'CH4', 'NH3', 'CO2')


def bulk_seeds() -> dict[str, Atoms]:
    """Return a handful of bulk crystals (primitive cells, experimental room-temperature lattice parameters in Å).

    Elements: Si (diamond), Cu (fcc), Fe (bcc), Mg (hcp); binaries: NaCl (rocksalt), GaAs (zincblende),
    MgO (rocksalt); ternary: SrTiO3 (cubic perovskite). Keys are ``'<formula>-<structure>'``.
    """
    seeds = {
        'Si-diamond': bulk('Si', 'diamond', a=5.431),
        'Cu-fcc': bulk('Cu', 'fcc', a=3.615),
        'Fe-bcc': bulk('Fe', 'bcc', a=2.8665),
        'Mg-hcp': bulk('Mg', 'hcp', a=3.209, c=5.211),
        'NaCl-rocksalt': bulk('NaCl', 'rocksalt', a=5.640),
        'GaAs-zincblende': bulk('GaAs', 'zincblende', a=5.653),
        'MgO-rocksalt': bulk('MgO', 'rocksalt', a=4.212),
        'SrTiO3-perovskite': Atoms(
            'SrTiO3',
            scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
            cell=np.eye(3) * 3.905,
            pbc=True,
        ),
    }
    return {name: _plain(atoms) for name, atoms in seeds.items()}


def two_d_seeds() -> dict[str, Atoms]:
    """Return a 2D crystal: an h-BN monolayer (a = 2.504 Å), periodic in x and y, with 20 Å of cell along z.

    The layer lies at z = 10 Å, the middle of the non-periodic direction; pbc is ``(True, True, False)``.
    """
    layer = graphene('BN', a=2.504, vacuum=TWO_D_VACUUM / 2)
    layer.pbc = (True, True, False)
    return {'BN-monolayer': _plain(layer)}


def molecular_crystal_seeds() -> dict[str, Atoms]:
    """Return a molecular crystal: dry ice, CO2 in space group Pa-3, a = 5.62 Å, four intact molecules per cell.

    C sits on the 4a sites (0, 0, 0) and O on the 8c sites (x, x, x) with x = 0.1185, which gives a C=O bond of
    about 1.15 Å; the closest contact between molecules is about 3.1 Å.
    """
    dry_ice = crystal(['C', 'O'], basis=[(0, 0, 0), (0.1185,) * 3], spacegroup=205, cellpar=[5.62] * 3 + [90] * 3)
    return {'CO2-Pa-3': _plain(dry_ice)}


def molecule_seeds() -> dict[str, Atoms]:
    """Return a few small molecules (``ase.build.molecule`` geometries), non-periodic, centred in a box.

    The box edges are the extent of the molecule plus :data:`MOLECULE_PADDING` along x, y and z.
    """
    seeds = {}
    for name in MOLECULES:
        atoms = molecule(name)
        atoms.center(vacuum=MOLECULE_PADDING / 2)
        atoms.pbc = False
        seeds[name] = _plain(atoms)
    return seeds


def all_seeds() -> dict[str, dict[str, Atoms]]:
    """Return every bundled seed, keyed by source name (:data:`SEED_SOURCES`) and then by seed name."""
    return {
        'bulk': bulk_seeds(),
        '2d': two_d_seeds(),
        'molcrys': molecular_crystal_seeds(),
        'molecules': molecule_seeds(),
    }


def _plain(atoms: Atoms) -> Atoms:
    """Return ``atoms`` reduced to species, positions, cell and pbc, without builder-specific arrays or info."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc)
