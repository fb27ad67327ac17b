"""The generator registry: one generator per generated subset, per-item seeds and keys, one item (no AiiDA)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from aiida_mad.constants import GENERATED_SUBSETS, IMPORTED_SUBSETS
from aiida_mad.structures.registry import (
    GENERATOR_STREAM,
    GENERATORS,
    GenerationError,
    generate_item,
    generation_key,
    get_generator,
    stream_rng,
)


def settings(subset: str, **changes) -> dict:
    generator = GENERATORS[subset]
    values = {
        'subset': subset,
        'generator': generator.name,
        'parameters': dict(generator.defaults),
        'element_pool': ['Si', 'Ge', 'C'],
        'min_distance_factor': 0.5,
        'max_attempts': generator.max_attempts,
        'seed': 7,
    }
    return {**values, **changes}


def test_every_generated_subset_has_its_generator():
    assert list(GENERATORS) == list(GENERATED_SUBSETS)
    for subset, generator in GENERATORS.items():
        assert generator.subset == subset
        assert get_generator(subset) is get_generator(generator.name) is generator
        assert generator.sources and all(source.startswith('mad/') for source in generator.sources)


@pytest.mark.parametrize('name', ['mc3d', 'rattled', ''])
def test_unknown_generator_names_the_known_subsets(name):
    with pytest.raises(GenerationError, match='generated subsets are mc3d-rattled, mc3d-random') as info:
        get_generator(name)
    assert all(subset in str(info.value) for subset in IMPORTED_SUBSETS)


def test_streams_are_independent_and_reproducible():
    first = stream_rng(3, 5, GENERATOR_STREAM, 0).random(4)
    np.testing.assert_array_equal(first, stream_rng(3, 5, GENERATOR_STREAM, 0).random(4))
    assert not np.array_equal(first, stream_rng(3, 5, GENERATOR_STREAM, 1).random(4))
    assert not np.array_equal(first, stream_rng(3, 6, GENERATOR_STREAM, 0).random(4))
    assert not np.array_equal(first, stream_rng(4, 5, GENERATOR_STREAM, 0).random(4))


def test_keys_depend_on_what_determines_the_structures():
    rattle = settings('mc3d-rattled')
    key = generation_key(rattle, 'parent-uuid', 3)
    assert len(key) == 64 and key == generation_key(dict(rattle, max_attempts=99), 'parent-uuid', 3)
    assert key != generation_key(rattle, 'parent-uuid', 4)
    assert key != generation_key(rattle, 'other-uuid', 3)
    assert key != generation_key(dict(rattle, seed=8), 'parent-uuid', 3)
    assert key != generation_key(dict(rattle, parameters={'scale': 0.1}), 'parent-uuid', 3)
    # Molecular fragments draw nothing: neither the seed nor the index changes them, nor their key.
    fragments = settings('shiftml-molfrags')
    assert generation_key(fragments, 'crystal', 0) == generation_key(dict(fragments, seed=99), 'crystal', 5)


def test_one_item_is_the_same_every_time_and_checked():
    silicon = bulk('Si', 'diamond', a=5.43, cubic=True)
    first = generate_item(settings('mc3d-rattled'), silicon, index=2)
    second = generate_item(settings('mc3d-rattled'), silicon, index=2)
    other = generate_item(settings('mc3d-rattled'), silicon, index=3)
    ((atoms, attempt),) = first.structures
    assert attempt == 0 and first.attempts == 1 and first.reasons == []
    np.testing.assert_array_equal(atoms.positions, second.structures[0][0].positions)
    assert not np.allclose(atoms.positions, other.structures[0][0].positions)
    # A close-contact threshold nothing can pass: every attempt is refused, with its reason.
    refused = generate_item(settings('mc3d-rattled', min_distance_factor=5.0, max_attempts=3), silicon, index=2)
    assert refused.structures == [] and refused.attempts == 3
    assert [reason.split(':')[0] for reason in refused.reasons] == ['attempt 0', 'attempt 1', 'attempt 2']
