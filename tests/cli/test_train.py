"""``aiida-mad train`` and ``aiida-mad model``: bad input refused with nothing submitted; list, show and export."""

from __future__ import annotations

from aiida import orm

from tests.training import trained


def process_count() -> int:
    return orm.QueryBuilder().append(orm.ProcessNode).count()


def test_train_refuses_an_unknown_dataset(run_cli_command, mtt):
    result = run_cli_command(['train', 'pet', 'no-such-dataset', '--code', mtt.full_label], raises=True)
    assert "unknown dataset 'no-such-dataset'" in result.output


def test_train_dos_refuses_a_dataset_without_dos(run_cli_command, mtt, dataset):
    before = process_count()
    result = run_cli_command(['train', 'dos', str(dataset.pk), '-p', 'tiny-dos', '--code', mtt.full_label], raises=True)
    assert 'has no DOS' in result.output
    assert process_count() == before


def test_train_lora_needs_a_base_model(run_cli_command, mtt, dataset):
    result = run_cli_command(['train', 'pet', str(dataset.pk), '-p', 'lora', '--code', mtt.full_label], raises=True)
    assert 'needs a base model' in result.output


def test_train_refuses_a_node_that_is_not_a_model(run_cli_command, mtt, dataset):
    result = run_cli_command(
        ['train', 'pet', str(dataset.pk), '--code', mtt.full_label, '--restart', str(dataset.pk)], raises=True
    )
    assert 'not a mad.model' in result.output


def test_model_list_show_export(run_cli_command, mtt, dataset, tmp_path):
    node = trained(mtt, dataset)
    model = node.outputs.model
    listed = run_cli_command(['model', 'list'])
    assert str(model.pk) in listed.output
    shown = run_cli_command(['model', 'show', str(model.pk)])
    assert 'architecture: pet' in shown.output
    assert f'dataset_uuid: {dataset.uuid}' in shown.output
    progress = run_cli_command(['model', 'show', str(node.pk)])
    assert f'MetatrainCalculation<{node.pk}> finished' in progress.output
    assert 'epochs 0-2' in progress.output
    target = tmp_path / 'pet.pt'
    run_cli_command(['model', 'export', str(model.pk), str(target), '--checkpoint'])
    assert target.read_bytes() == model.get_content(mode='rb')
    assert target.with_suffix('.ckpt').stat().st_size > 0
    again = run_cli_command(['model', 'export', str(model.pk), str(target)], raises=True)
    assert 'exists already' in again.output
    wrong = run_cli_command(['model', 'show', str(dataset.pk)], raises=True)
    assert 'not a model or a training' in wrong.output
