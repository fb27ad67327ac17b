"""``atomic-energies.csv``: the isolated-atom reference energies of one level of theory."""

from __future__ import annotations

import csv
import pathlib

from ase.data import atomic_numbers


def write_atomic_energies_csv(energies: dict[str, float], path, *, fingerprint: str) -> pathlib.Path:
    """Write ``element,atomic_number,energy_eV,fingerprint`` rows in order of atomic number; return the path."""
    path = pathlib.Path(path)
    with path.open('w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['element', 'atomic_number', 'energy_eV', 'fingerprint'])
        for element in sorted(energies, key=lambda symbol: atomic_numbers[symbol]):
            writer.writerow([element, atomic_numbers[element], repr(float(energies[element])), fingerprint])
    return path


def read_atomic_energies_csv(path) -> tuple[dict[str, float], str]:
    """Return ``(energies, fingerprint)`` from a file written by :func:`write_atomic_energies_csv`."""
    with pathlib.Path(path).open(newline='') as handle:
        rows = list(csv.DictReader(handle))
    fingerprints = {row['fingerprint'] for row in rows}
    if len(fingerprints) != 1:
        raise ValueError(f'{path}: expected one fingerprint, found {len(fingerprints)}')
    return {row['element']: float(row['energy_eV']) for row in rows}, fingerprints.pop()
