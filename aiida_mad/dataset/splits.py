"""Stable train/validation/test splits: a frame's split depends only on its source uuid and the dataset seed.

Method (hash thresholds)
    ``u = int(sha256(f'{seed}:{uuid}')[:13 hex digits]) / 16**13`` is a uniform number in ``[0, 1)`` (52 bits,
    exact in a float). With fractions ``(f_train, f_val, f_test)`` a frame goes to ``train`` if
    ``u < f_train``, to ``val`` if ``u < f_train + f_val`` and to ``test`` otherwise. Nothing else enters, so
    adding, removing or reordering other frames never moves a frame to another split, and the same uuid and seed
    give the same split on any machine.

Trade-off: stability against exact proportions
    The issue asks for both "stable when data is added" and "80:10:10 per subset". No rule that looks only at the
    uuid and the seed can be exact for every set of frames (ten uuids that all hash below 0.8 are ten training
    frames). The alternative, ranking a subset's frames by ``u`` and cutting at the rounded 80 % and 90 %
    positions, is exact within rounding but the cut positions move when frames are added, so old frames cross
    split boundaries: it breaks the stability the spec names as the property of the split. We therefore keep the
    hash thresholds. Each split's count in a subset of ``n`` frames is then binomial, with standard deviation
    ``sqrt(n f (1 - f))``: for 1 000 frames per subset about 12.6 frames (1.3 points) for the 80 % training
    split and 9.5 frames (0.95 points) for each 10 % split; for MAD-sized subsets (10^4 to 10^5 frames) well
    under half a point. :func:`proportion_tolerance` gives the binomial tolerance tests and reports should use,
    and :func:`check_proportions` applies it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from ase import Atoms

from .frames import SPLITS

__all__ = [
    'DEFAULT_FRACTIONS',
    'apply_splits',
    'assign_split',
    'check_proportions',
    'proportion_tolerance',
    'split_counts',
    'split_value',
    'validate_fractions',
]

#: The MAD split: 80 % training, 10 % validation, 10 % test.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

_HEX_DIGITS = 13  # 52 bits: exactly representable in a float64 mantissa
_SCALE = float(16**_HEX_DIGITS)


def validate_fractions(fractions) -> tuple[float, float, float]:
    """Return ``fractions`` as three floats after checking them.

    :param fractions: ``(train, val, test)`` fractions.
    :raises ValueError: if they are not three finite, non-negative numbers that sum to 1 within 1e-9.
    """
    try:
        values = tuple(fractions)
    except TypeError:
        raise ValueError(f'split fractions must be three numbers (train, val, test), got {fractions!r}') from None
    if len(values) != 3:
        raise ValueError(f'split fractions must be three numbers (train, val, test), got {len(values)}: {values!r}')
    result = []
    for name, value in zip(SPLITS, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f'split fraction {name} is not a number: {value!r}') from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f'split fraction {name} must be a finite non-negative number, got {value!r}')
        result.append(float(value))
    total = math.fsum(result)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f'split fractions {tuple(result)} sum to {total!r}, not 1 (tolerance 1e-9)')
    return result[0], result[1], result[2]


def _validate_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f'the dataset seed must be an integer, got {seed!r}')
    return seed


def split_value(uuid: str, seed: int) -> float:
    """Return the uniform number in ``[0, 1)`` that decides the split of ``uuid`` under ``seed``."""
    if not isinstance(uuid, str) or not uuid:
        raise ValueError(f'a split needs a non-empty uuid string, got {uuid!r}')
    digest = hashlib.sha256(f'{_validate_seed(seed)}:{uuid}'.encode()).hexdigest()
    return int(digest[:_HEX_DIGITS], 16) / _SCALE


def _split_of(value: float, fractions: tuple[float, float, float]) -> str:
    if value < fractions[0]:
        return 'train'
    if value < fractions[0] + fractions[1]:
        return 'val'
    # Guard against a zero test fraction with rounding in f_train + f_val slightly below 1.
    if fractions[2] == 0.0:
        return 'val' if fractions[1] > 0 else 'train'
    return 'test'


def assign_split(uuid: str, seed: int, fractions=DEFAULT_FRACTIONS) -> str:
    """Return the split (``'train'``, ``'val'`` or ``'test'``) of a frame.

    :param uuid: the frame's source uuid.
    :param seed: the dataset seed.
    :param fractions: ``(train, val, test)`` fractions, checked by :func:`validate_fractions`.
    """
    return _split_of(split_value(uuid, seed), validate_fractions(fractions))


def apply_splits(frames: Iterable[Atoms], seed: int, fractions=DEFAULT_FRACTIONS) -> None:
    """Set ``info['split']`` of every frame from its ``info['source_uuid']`` and the seed (in place)."""
    checked = validate_fractions(fractions)
    _validate_seed(seed)
    for frame in frames:
        frame.info['split'] = _split_of(split_value(frame.info['source_uuid'], seed), checked)


def split_counts(frames: Iterable[Atoms]) -> dict[str, dict[str, int]]:
    """Return ``{subset: {'train': n, 'val': n, 'test': n}}`` with subsets sorted and every split present."""
    counts: dict[str, dict[str, int]] = {}
    for frame in frames:
        counts.setdefault(frame.info['subset'], dict.fromkeys(SPLITS, 0))[frame.info['split']] += 1
    return {subset: counts[subset] for subset in sorted(counts)}


def proportion_tolerance(n: int, fraction: float, sigmas: float = 5.0) -> float:
    """Return the largest expected deviation of a split's count from ``n * fraction``.

    The count is binomial(``n``, ``fraction``) under hash thresholds: the tolerance is ``sigmas`` standard
    deviations plus one frame for rounding.
    """
    return sigmas * math.sqrt(n * fraction * (1.0 - fraction)) + 1.0


def check_proportions(
    counts: dict[str, dict[str, int]], fractions=DEFAULT_FRACTIONS, sigmas: float = 5.0
) -> dict[str, dict[str, float]]:
    """Check per-subset split counts against the fractions with a binomial tolerance.

    :param counts: as returned by :func:`split_counts`.
    :param fractions: the fractions the split was made with.
    :param sigmas: how many binomial standard deviations to allow (plus one frame for rounding).
    :return: ``{subset: {split: deviation in units of the standard deviation}}``.
    :raises ValueError: naming the subset and split whose count lies outside the tolerance.
    """
    checked = validate_fractions(fractions)
    report: dict[str, dict[str, float]] = {}
    for subset, per_split in counts.items():
        n = sum(per_split.values())
        report[subset] = {}
        for split, fraction in zip(SPLITS, checked, strict=True):
            expected = n * fraction
            deviation = per_split.get(split, 0) - expected
            sigma = math.sqrt(n * fraction * (1.0 - fraction))
            report[subset][split] = deviation / sigma if sigma > 0 else 0.0
            if abs(deviation) > proportion_tolerance(n, fraction, sigmas):
                raise ValueError(
                    f'subset {subset}: {per_split.get(split, 0)} of {n} frames in {split}, expected {expected:.1f} '
                    f'± {proportion_tolerance(n, fraction, sigmas):.1f} ({sigmas} binomial standard deviations + 1)'
                )
    return report
