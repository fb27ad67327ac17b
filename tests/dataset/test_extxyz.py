"""Extended XYZ: lossless round trips through ase.io.read, metatrain's and MACE's own readers, shards, split files."""

from __future__ import annotations

import gzip
import io
import warnings

import ase.io
import numpy as np
import pytest

from aiida_mad.dataset.extxyz import (
    PROPERTIES,
    from_ase,
    read_extxyz,
    read_shards,
    write_extxyz,
    write_shards,
    write_split_files,
    write_split_files_from_shards,
)
from aiida_mad.dataset.frames import FrameError, content_hash


def assert_same_frames(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert np.array_equal(got.numbers, want.numbers)
        assert np.array_equal(got.positions, want.positions)
        assert np.array_equal(got.cell.array, want.cell.array)
        assert np.array_equal(got.pbc, want.pbc)
        assert np.array_equal(got.arrays['forces'], want.arrays['forces'])
        assert set(got.info) == set(want.info)
        for key, value in want.info.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(got.info[key], value, equal_nan=True), key
            else:
                assert got.info[key] == value, key
    assert content_hash(actual) == content_hash(expected)


def test_ase_reads_the_stored_values_exactly(tmp_path, frames, dos_frames):
    path = tmp_path / 'mad-train.xyz'
    everything = frames + dos_frames
    assert write_extxyz(everything, path) == len(everything)
    read = ase.io.read(path, index=':')
    assert len(read) == len(everything)
    for atoms, frame in zip(read, everything, strict=True):
        assert atoms.calc is None  # REF_* keys never turn into a calculator
        assert atoms.get_chemical_symbols() == frame.get_chemical_symbols()
        assert np.array_equal(atoms.positions, frame.positions)
        assert np.array_equal(atoms.cell.array, frame.cell.array)
        assert np.array_equal(atoms.pbc, frame.pbc)
        assert atoms.info['REF_energy'] == frame.info['energy']
        assert atoms.info['REF_energy_baseline_subtracted'] == frame.info['energy_baseline_subtracted']
        assert np.array_equal(atoms.arrays['REF_forces'], frame.arrays['forces'])
        stress = atoms.info['REF_stress']
        assert stress.shape == (9,)
        if 'stress' in frame.info:
            assert np.array_equal(stress.reshape(3, 3), frame.info['stress'])
        else:
            assert np.isnan(stress).all()  # 0D frames: masked for metatrain
        for key in ('subset', 'split', 'source_uuid', 'fingerprint'):
            assert atoms.info[key] == frame.info[key]
            assert isinstance(atoms.info[key], str)
        if 'dos' in frame.info:
            assert np.array_equal(atoms.info['REF_dos'], frame.info['dos'], equal_nan=True)
        else:
            assert 'REF_dos' not in atoms.info


def test_read_extxyz_round_trip_fast_and_through_ase(tmp_path, frames, dos_frames):
    path = tmp_path / 'frames.xyz'
    everything = frames + dos_frames
    write_extxyz(everything, path)
    assert_same_frames(read_extxyz(path), everything)
    assert_same_frames([from_ase(atoms) for atoms in ase.io.read(path, index=':')], everything)


def test_missing_stress_omit_leaves_the_key_out(tmp_path, frames):
    path = tmp_path / 'mace.xyz'
    write_extxyz(frames, path, missing_stress='omit')
    for atoms, frame in zip(ase.io.read(path, index=':'), frames, strict=True):
        assert ('REF_stress' in atoms.info) == ('stress' in frame.info)
    assert_same_frames(read_extxyz(path), frames)
    with pytest.raises(ValueError, match='missing_stress must be one of'):
        write_extxyz(frames, tmp_path / 'x.xyz', missing_stress='zero')


def test_header_layout(tmp_path, frames):
    buffer = io.StringIO()
    write_extxyz(frames[:2], buffer)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == str(len(frames[0]))
    header = lines[1]
    assert f'Properties={PROPERTIES}' in header
    assert header.startswith('Lattice="')
    assert 'pbc="T T T"' in header
    assert f'source_uuid={frames[0].info["source_uuid"]}' in header
    assert ' energy=' not in header and ' stress=' not in header  # only REF_* keys
    cluster_header = buffer.getvalue().splitlines()[len(frames[0]) + 3]
    assert 'pbc="F F F"' in cluster_header
    assert 'REF_stress="nan nan nan nan nan nan nan nan nan"' in cluster_header


def metatrain_read(path, dos_points: int = 0):
    """Read ``path`` with metatrain's own readers, as a metatrain training config names it; return systems, targets."""
    import omegaconf
    from metatrain.utils.data import readers
    from metatrain.utils.omegaconf import expand_dataset_config

    targets = {
        'energy': {'key': 'REF_energy', 'unit': 'eV', 'forces': {'key': 'REF_forces'}, 'stress': {'key': 'REF_stress'}}
    }
    if dos_points:
        targets['mtt::dos'] = {'quantity': '', 'key': 'REF_dos', 'type': 'scalar', 'num_subtargets': dos_points}
    conf = omegaconf.OmegaConf.create(
        {'systems': {'read_from': str(path), 'reader': 'ase', 'length_unit': 'angstrom'}, 'targets': targets}
    )
    conf = expand_dataset_config(conf)[0]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # 9-long stress vectors; zeroed cell vectors of non-periodic directions
        systems = readers.read_systems(str(path), reader='ase')
        read, infos = readers.read_targets(conf['targets'])
    return systems, read, infos


def check_metatrain_energy(systems, energies, frames) -> None:
    """Check metatrain's systems and energy targets (with force and stress gradients) against the frames."""
    assert len(systems) == len(energies) == len(frames)
    for system, energy, frame in zip(systems, energies, frames, strict=True):
        assert np.array_equal(system.positions.numpy(), frame.positions)
        assert np.array_equal(system.types.numpy(), frame.numbers)
        assert np.array_equal(system.pbc.numpy(), frame.pbc)
        block = energy.block()
        assert block.values.item() == frame.info['energy']
        # metatrain stores forces as position gradients (minus the forces) and stress times volume as strain ones
        assert np.array_equal(-block.gradient('positions').values.numpy()[:, :, 0], frame.arrays['forces'])
        strain = block.gradient('strain').values.numpy()[0, :, :, 0]
        if 'stress' in frame.info:
            np.testing.assert_allclose(strain, frame.info['stress'] * frame.get_volume(), rtol=1e-14, atol=0)
        else:
            assert np.isnan(strain).all()  # masked in metatrain's losses


def test_metatrain_reads_systems_and_targets(tmp_path, dos_frames):
    path = tmp_path / 'mad-train.xyz'
    write_extxyz(dos_frames, path)
    points = dos_frames[0].info['dos'].size
    systems, targets, infos = metatrain_read(path, points)
    assert infos['energy'].gradients == ['positions', 'strain']
    check_metatrain_energy(systems, targets['energy'], dos_frames)
    assert len(targets['mtt::dos']) == len(dos_frames)
    for dos, frame in zip(targets['mtt::dos'], dos_frames, strict=True):
        assert np.array_equal(dos.block().values.numpy()[0], frame.info['dos'], equal_nan=True)


def check_mace_reads(path, frames, missing_stress: str) -> None:
    """Read ``path`` with MACE's own reader (``REF_*`` keys) and compare with the frames."""
    import torch
    from mace.data import utils
    from mace.tools.torch_tools import voigt_to_matrix

    keys = utils.update_keyspec_from_kwargs(
        utils.KeySpecification(),
        {'energy_key': 'REF_energy', 'forces_key': 'REF_forces', 'stress_key': 'REF_stress', 'head_key': 'head'},
    )
    _, configs = utils.load_from_xyz(str(path), key_specification=keys)
    assert len(configs) == len(frames)
    for config, frame in zip(configs, frames, strict=True):
        assert np.array_equal(config.atomic_numbers, frame.numbers)
        assert np.array_equal(config.positions, frame.positions)
        assert np.array_equal(config.cell, frame.cell.array)
        assert config.pbc == tuple(bool(value) for value in frame.pbc)
        assert config.properties['energy'] == frame.info['energy']
        assert np.array_equal(config.properties['forces'], frame.arrays['forces'])
        if 'stress' in frame.info:
            matrix = voigt_to_matrix(torch.tensor(config.properties['stress'], dtype=torch.float64)).numpy()
            assert np.array_equal(matrix, frame.info['stress'])
            assert config.property_weights['stress'] == 1.0
        elif missing_stress == 'omit':
            assert config.properties['stress'] is None
            assert config.property_weights['stress'] == 0.0  # MACE skips the stress of 0D frames
        else:
            # NaN stress is NOT masked by MACE: files for MACE training must use missing_stress='omit'
            assert np.isnan(config.properties['stress']).all()


@pytest.mark.parametrize('missing_stress', ['omit', 'nan'])
def test_mace_reads_the_reference_keys(tmp_path, frames, missing_stress):
    path = tmp_path / 'mace.xyz'
    write_extxyz(frames, path, missing_stress=missing_stress)
    check_mace_reads(path, frames, missing_stress)


def test_invalid_frame_writes_nothing(tmp_path, frames):
    frames[4].info['split'] = 'holdout'
    path = tmp_path / 'bad.xyz'
    with pytest.raises(FrameError, match=r'frame 4 \(source_uuid .*\): info\[.split.\] is .holdout.'):
        write_extxyz(frames, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_shards_round_trip_and_are_deterministic(tmp_path, frames, dos_frames):
    everything = frames + dos_frames
    paths = write_shards(everything, tmp_path / 'a', frames_per_shard=7)
    assert [path.name for path in paths] == [f'frames-{number:05d}.extxyz.gz' for number in range(6)]
    with gzip.open(paths[0], 'rt') as handle:
        assert handle.readline().strip() == str(len(everything[0]))
    assert_same_frames(read_shards(tmp_path / 'a'), everything)
    assert_same_frames(read_shards(paths[::-1][::-1]), everything)
    again = write_shards(everything, tmp_path / 'b', frames_per_shard=7)
    assert [path.read_bytes() for path in paths] == [path.read_bytes() for path in again]
    with pytest.raises(FileExistsError, match='already holds 6 shard'):
        write_shards(everything, tmp_path / 'a')
    with pytest.raises(ValueError, match='frames_per_shard must be a positive integer'):
        write_shards(everything, tmp_path / 'c', frames_per_shard=0)


def test_split_files(tmp_path, frames):
    paths = write_split_files(frames, tmp_path)
    assert {split: path.name for split, path in paths.items()} == {
        'train': 'mad-train.xyz',
        'val': 'mad-val.xyz',
        'test': 'mad-test.xyz',
    }
    for split, path in paths.items():
        expected = [frame for frame in frames if frame.info['split'] == split]
        assert_same_frames(read_extxyz(path), expected)


def test_foreign_layout_goes_through_ase(tmp_path, frames):
    """A file written by ase.io.write (other column order, extra keys) is still read into frames."""
    atoms_list = []
    for frame in frames[:6]:
        atoms = frame.copy()
        atoms.info = {
            'REF_energy': frame.info['energy'],
            'subset': frame.info['subset'],
            'split': frame.info['split'],
            'source_uuid': frame.info['source_uuid'],
            'fingerprint': frame.info['fingerprint'],
            'comment': 'written by ase',
        }
        if 'stress' in frame.info:
            atoms.info['REF_stress'] = frame.info['stress'].ravel()
        atoms.arrays = {'numbers': atoms.numbers, 'positions': atoms.positions, 'REF_forces': frame.arrays['forces']}
        atoms_list.append(atoms)
    path = tmp_path / 'ase.xyz'
    ase.io.write(path, atoms_list, format='extxyz')
    back = read_extxyz(path)
    assert len(back) == 6
    for got, want in zip(back, frames[:6], strict=True):
        assert got.info['energy'] == want.info['energy']
        np.testing.assert_allclose(got.positions, want.positions, rtol=0, atol=1e-7)
        np.testing.assert_allclose(got.arrays['forces'], want.arrays['forces'], rtol=0, atol=1e-7)
        assert ('stress' in got.info) == ('stress' in want.info)


def test_reading_a_file_without_reference_energy_names_the_problem(tmp_path, frames):
    atoms = frames[0].copy()
    atoms.info = {'subset': 'mc3d'}
    atoms.arrays = {'numbers': atoms.numbers, 'positions': atoms.positions}
    path = tmp_path / 'plain.xyz'
    ase.io.write(path, atoms, format='extxyz')
    with pytest.raises(FrameError, match='has no REF_energy'):
        read_extxyz(path)


@pytest.mark.parametrize('missing_stress', ['nan', 'omit'])
def test_split_files_from_shards_equal_the_parsed_route(tmp_path, frames, dos_frames, missing_stress):
    everything = frames + dos_frames
    shards = write_shards(everything, tmp_path / 'shards', frames_per_shard=8)
    (tmp_path / 'fast').mkdir()
    (tmp_path / 'slow').mkdir()
    fast = write_split_files_from_shards(shards, tmp_path / 'fast', missing_stress=missing_stress)
    slow = write_split_files(read_shards(shards), tmp_path / 'slow', missing_stress=missing_stress)
    for split, (path, count) in fast.items():
        assert path.read_bytes() == slow[split].read_bytes()
        assert count == sum(frame.info['split'] == split for frame in everything)
    assert sorted(item.name for item in (tmp_path / 'fast').iterdir()) == [
        'mad-test.xyz',
        'mad-train.xyz',
        'mad-val.xyz',
    ]


def test_split_files_from_foreign_shards_go_through_the_frame_model(tmp_path, frames):
    """Shards written without stress for 0D frames are re-written, not copied, so the files stay uniform."""
    (tmp_path / 'shards').mkdir()
    shard = tmp_path / 'shards' / 'frames-00000.extxyz.gz'
    write_extxyz(frames, shard, missing_stress='omit')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'reference').mkdir()
    result = write_split_files_from_shards(tmp_path / 'shards', tmp_path / 'out')
    reference = write_split_files(frames, tmp_path / 'reference')
    for split, (path, _) in result.items():
        assert path.read_bytes() == reference[split].read_bytes()
