"""Parser of ``mad.metatrain`` on the stored outputs of real tiny ``mtt train`` runs (``fixtures/metatrain/``).

No training runs here: each case is the retrieved folder of a real run (see ``fixtures/metatrain/README.md``), put
under a ``CalcJobNode`` whose ``dataset`` input holds the frames that run trained on.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_mad.calculations.metatrain import MetatrainCalculation
from aiida_mad.data.dataset import DatasetData
from aiida_mad.data.model import ModelData
from aiida_mad.dataset.extxyz import read_extxyz
from aiida_mad.parsers.metatrain import MetatrainParser, parse_final_errors, parse_metrics
from aiida_mad.parsers.training import complete_checkpoint

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'metatrain'
TINY = {
    'architecture': {
        'name': 'pet',
        'model': {'d_pet': 8, 'num_gnn_layers': 1},
        'training': {'num_epochs': 3, 'checkpoint_interval': 1},
    }
}
EXIT = MetatrainCalculation.exit_codes


@pytest.fixture
def fixture_dataset():
    """Return a ``mad.dataset`` of the frames the fixture runs trained on (stored once per profile)."""
    query = orm.QueryBuilder().append(DatasetData, filters={'attributes.name': 'parser-fixture'})
    if query.count():
        return query.first(flat=True)
    frames = []
    for split in ('train', 'val', 'test'):
        frames.extend(read_extxyz(FIXTURES / 'inputs' / f'mad-{split}.xyz'))
    return DatasetData(frames, name='parser-fixture', seed=0, atomic_energies={'Cu': 3.51}).store()


def calc_job_node(aiida_localhost, dataset, case: str, *, scheduler_status: int | None = None):
    """Return a stored ``mad.metatrain`` node with the fixture folder ``case`` as its retrieved outputs."""
    node = orm.CalcJobNode(computer=aiida_localhost, process_type='aiida.calculations:mad.metatrain')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    node.set_option('output_filename', 'mtt.out')
    node.set_option('parser_name', 'mad.metatrain')
    node.base.links.add_incoming(dataset, LinkType.INPUT_CALC, 'dataset')
    node.base.links.add_incoming(orm.Dict(TINY).store(), LinkType.INPUT_CALC, 'parameters')
    node.store()
    if scheduler_status is not None:
        node.set_exit_status(scheduler_status)
    retrieved = orm.FolderData()
    retrieved.base.repository.put_object_from_tree(str(FIXTURES / case / 'retrieved'))  # case: a name or a path
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    return node


def parse(node, case: str):
    temporary = FIXTURES / case / 'temporary'
    return MetatrainParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=str(temporary) if temporary.exists() else None
    )


def test_finished_run(aiida_localhost, fixture_dataset):
    results, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, 'finished'), 'finished')
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    model = results['model']
    assert isinstance(model, ModelData)
    assert model.architecture == 'pet'
    assert model.epochs == 3
    assert model.base.attributes.get('metatrain_version') == '2026.4.1'
    assert model.n_parameters >= model.n_trainable_parameters > 0
    assert set(model.errors) == {'train', 'val', 'test'}
    assert model.errors['val']['energy RMSE (per atom) (meV)'] > 0
    assert model.energy_reference == 'baseline_subtracted'
    assert model.base.attributes.get('baseline')['elements'] == ['Cu']
    checkpoint = results['checkpoint']
    assert checkpoint.filename == 'model.ckpt'
    assert checkpoint.base.attributes.get('epoch') == 2
    assert checkpoint.base.attributes.get('fingerprint') == fixture_dataset.fingerprint
    metrics = results['metrics']
    np.testing.assert_array_equal(metrics.get_array('epoch'), [0, 1, 2])
    assert results['results']['epochs_this_run'] == 3


def test_interrupted_run_keeps_the_newest_intermediate_checkpoint(aiida_localhost, fixture_dataset):
    node = calc_job_node(aiida_localhost, fixture_dataset, 'interrupted')
    results, calcfunction = parse(node, 'interrupted')
    assert calcfunction.exit_status == EXIT.ERROR_TRAINING_INTERRUPTED.status
    checkpoint = results['checkpoint']
    newest = max(int(path.stem.split('_')[1]) for path in (FIXTURES / 'interrupted' / 'temporary').glob('*.ckpt'))
    assert checkpoint.filename == f'model_{newest}.ckpt'
    assert checkpoint.base.attributes.get('epoch') == newest
    assert f'restart from checkpoint model_{newest}.ckpt' in calcfunction.exit_message
    assert 'model' not in results


def test_checkpoint_cut_short_by_the_kill_is_skipped(aiida_localhost, fixture_dataset, tmp_path):
    # The run was killed while writing the checkpoint of epoch 6 (and the final one): torch cannot load either
    # (no ZIP central directory), so the restart must take the complete checkpoint of epoch 4.
    case = tmp_path / 'interrupted'
    shutil.copytree(FIXTURES / 'interrupted', case)
    whole = (case / 'temporary' / 'model_4.ckpt').read_bytes()
    assert complete_checkpoint(case / 'temporary' / 'model_4.ckpt')
    (case / 'temporary' / 'model_6.ckpt').write_bytes(whole[: len(whole) // 2])
    (case / 'retrieved' / 'model.ckpt').write_bytes(whole[:-30])
    assert not complete_checkpoint(case / 'temporary' / 'model_6.ckpt')
    assert not complete_checkpoint(case / 'retrieved' / 'model.ckpt')
    results, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, str(case)), str(case))
    checkpoint = results['checkpoint']
    assert checkpoint.filename == 'model_4.ckpt' and checkpoint.base.attributes.get('epoch') == 4
    assert checkpoint.get_content('rb') == whole
    assert 'restart from checkpoint model_4.ckpt' in calcfunction.exit_message
    (case / 'temporary' / 'model_4.ckpt').write_bytes(whole[:100])
    results, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, str(case)), str(case))
    assert 'checkpoint' not in results, 'no complete checkpoint: nothing to restart from'


def test_walltime_from_the_scheduler(aiida_localhost, fixture_dataset):
    node = calc_job_node(
        aiida_localhost, fixture_dataset, 'interrupted', scheduler_status=EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME.status
    )
    results, calcfunction = parse(node, 'interrupted')
    assert calcfunction.exit_status == EXIT.ERROR_OUT_OF_WALLTIME.status
    assert 'checkpoint' in results


def test_nan_loss(aiida_localhost, fixture_dataset):
    _, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, 'nan'), 'nan')
    assert calcfunction.exit_status == EXIT.ERROR_NAN_LOSS.status
    assert 'NaN' in calcfunction.exit_message


def test_failed_run_names_the_exception(aiida_localhost, fixture_dataset):
    _, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, 'failed'), 'failed')
    assert calcfunction.exit_status == EXIT.ERROR_TRAINING_FAILED.status
    assert 'ZeroDivisionError' in calcfunction.exit_message


def test_metrics_and_final_errors_parsers():
    arrays, columns = parse_metrics((FIXTURES / 'finished' / 'retrieved' / 'train.csv').read_text())
    assert columns['training_loss'] == {'header': 'training loss', 'unit': ''}
    assert columns['validation_energy_rmse_per_atom']['unit'] == 'meV'
    assert arrays['epoch'].dtype == np.int64
    errors = parse_final_errors((FIXTURES / 'finished' / 'retrieved' / 'train.log').read_text())
    assert sorted(errors) == ['test', 'train', 'val']
    with pytest.raises(ValueError, match='no header and units rows'):
        parse_metrics('Epoch,loss\n')
    with pytest.raises(ValueError, match='line 3: 1 values for 2 columns'):
        parse_metrics('Epoch,loss\n,\n1\n')


def nan_case(tmp_path, nan_at_epoch: int):
    """Return the ``interrupted`` case (checkpoint of epoch 4) with its training loss NaN from ``nan_at_epoch`` on."""
    case = tmp_path / f'nan-from-{nan_at_epoch}'
    shutil.copytree(FIXTURES / 'interrupted', case)
    metrics = case / 'retrieved' / 'train.csv'
    header, units, *rows = metrics.read_text().splitlines()
    while int(rows[-1].split(',')[0]) < nan_at_epoch:
        epoch, *values = rows[-1].split(',')
        rows.append(','.join([f'{int(epoch) + 1:4d}', *values]))
    for index, row in enumerate(rows):
        columns = row.split(',')
        if int(columns[0]) >= nan_at_epoch:
            columns[2] = 'nan'
            rows[index] = ','.join(columns)
    metrics.write_text('\n'.join([header, units, *rows]) + '\n')
    return case


def test_nan_loss_keeps_only_a_checkpoint_from_before_the_nan(aiida_localhost, fixture_dataset, tmp_path):
    """The checkpoint of epoch 4 is kept when the loss turns NaN in epoch 5, and refused when it is NaN in epoch 4."""
    case = nan_case(tmp_path, 5)
    results, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, case), case)
    assert calcfunction.exit_status == EXIT.ERROR_NAN_LOSS.status
    assert 'epoch 5' in calcfunction.exit_message
    assert results['checkpoint'].filename == 'model_4.ckpt'

    case = nan_case(tmp_path, 4)
    results, calcfunction = parse(calc_job_node(aiida_localhost, fixture_dataset, case), case)
    assert calcfunction.exit_status == EXIT.ERROR_NAN_LOSS.status
    assert 'checkpoint' not in results
