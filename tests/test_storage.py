"""Storage per labelled structure, on the real labelled data of ``tests/labelled.py``: nothing stored twice.

The level of theory (the md5 of every pseudopotential of the family) is one node per fingerprint, shared by every
run, and not copied into each result's ``properties`` (which keep its fingerprint); the DOS energy grid is one object
of the repository for every run; ``bench/bench_storage.py`` counts a shared node once. The results are the same as
with the old layout, where ``properties`` kept the level of theory, and it is read back from either layout.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_mad.calculations.dft import extract_dft_results
from aiida_mad.dos import energy_grid
from aiida_mad.fingerprint import fingerprint
from aiida_mad.workflows.dft import LEVEL_OF_THEORY_LABEL, result_level_of_theory, result_theory_summary

BENCH = pathlib.Path(__file__).resolve().parents[1] / 'bench' / 'bench_storage.py'


def _extraction(workchain: orm.WorkflowNode) -> orm.CalcFunctionNode:
    [node] = [child for child in workchain.called if child.process_label == 'extract_dft_results']
    return node


def _runs(labelled) -> list[orm.WorkflowNode]:
    """Return every finished run at the ``fast`` level of theory (four structures and the duplicate run)."""
    return [*(node for subset in labelled.used for node in labelled.nodes(subset)), orm.load_node(labelled.duplicate)]


def test_level_of_theory_is_one_node_per_fingerprint(labelled):
    runs = _runs(labelled)
    shared = {_extraction(node).inputs.level_of_theory.pk for node in runs}
    assert len(shared) == 1, 'every run at one level of theory takes the same level-of-theory node'
    theory = orm.load_node(shared.pop())
    key = runs[0].outputs.properties['fingerprint']
    assert theory.label == f'{LEVEL_OF_THEORY_LABEL} {key}'
    assert fingerprint(theory.get_dict()) == key
    for node in runs:
        context = _extraction(node).inputs.context.get_dict()
        assert 'level_of_theory' not in context, f'{node.pk}: the context holds the level of theory again'
        assert context['fingerprint'] == key
        properties = node.outputs.properties.get_dict()
        assert 'level_of_theory' not in properties, f'{node.pk}: the properties hold the level of theory again'
        assert properties['fingerprint'] == key
        assert result_level_of_theory(node) == theory.get_dict()
    assert result_theory_summary(runs[0])['level_of_theory'] == theory.get_dict()

    other_run = orm.load_node(labelled.other_level)
    other = _extraction(other_run).inputs.level_of_theory
    assert other.pk != theory.pk
    assert other.label == f'{LEVEL_OF_THEORY_LABEL} {other_run.outputs.properties["fingerprint"]}'


def test_old_layout_gives_the_same_results(labelled):
    """The level of theory in ``context`` (results stored before the shared node) gives the same outputs.

    Those results have the level of theory in ``properties`` too: the old layout still copies it there, and
    :func:`result_level_of_theory` reads it from there (a work chain of that layout returns these outputs).
    """
    node = labelled.nodes('mc3d-rattled')[0]
    extraction = _extraction(node)
    inputs = {label: extraction.inputs[label] for label in ('structure', 'output_parameters', 'output_trajectory')}
    theory = extraction.inputs.level_of_theory.get_dict()
    context = orm.Dict({**extraction.inputs.context.get_dict(), 'level_of_theory': theory})
    old, call = run_get_node(extract_dft_results, **inputs, output_band=extraction.inputs.output_band, context=context)
    assert call.is_finished_ok
    assert 'level_of_theory' not in call.inputs
    properties = old['properties'].get_dict()
    assert properties.pop('level_of_theory') == theory
    assert properties == node.outputs.properties.get_dict()
    assert old['energy'].value == node.outputs.energy.value
    for label, array in (('forces', 'forces'), ('stress', 'stress'), ('dos', 'dos'), ('dos', 'energies')):
        np.testing.assert_array_equal(old[label].get_array(array), node.outputs[label].get_array(array))

    # A work chain of the old layout: its `extract_dft_results` has no `level_of_theory` input, its properties do.
    workchain = orm.WorkflowNode()
    workchain.store()
    old['properties'].base.links.add_incoming(workchain, LinkType.RETURN, 'properties')
    assert result_level_of_theory(workchain) == theory
    assert fingerprint(result_level_of_theory(workchain)) == properties['fingerprint']


def _returning(properties: dict) -> orm.WorkflowNode:
    """Return a stored work chain node that returns ``properties``, with no process under it."""
    workchain = orm.WorkflowNode().store()
    orm.Dict(properties).store().base.links.add_incoming(workchain, LinkType.RETURN, 'properties')
    return workchain


def test_level_of_theory_of_a_result_without_its_calcfunction(labelled):
    """Rows without the ``extract_dft_results`` (inserted in bulk) take the shared node of their fingerprint."""
    node = labelled.nodes('mc3d')[0]
    key = node.outputs.properties['fingerprint']
    assert result_level_of_theory(_returning({'fingerprint': key})) == result_level_of_theory(node)
    unknown = _returning({'fingerprint': 'f' * 64})
    with pytest.raises(ValueError, match=rf'WorkflowNode<{unknown.pk}> has no level of theory'):
        result_level_of_theory(unknown)
    unfinished = orm.WorkflowNode().store()
    with pytest.raises(ValueError, match=rf'WorkflowNode<{unfinished.pk}> has no level of theory'):
        result_level_of_theory(unfinished)


def test_dos_energy_grid_is_one_repository_object(labelled):
    runs = _runs(labelled)
    keys = {name: set() for name in ('energies.npy', 'dos.npy')}
    for node in runs:
        entries = node.outputs.dos.base.repository.metadata['o']
        for name, found in keys.items():
            found.add(entries[name]['k'])
    assert len(keys['energies.npy']) == 1, 'the content-addressed object store keeps the grid once'
    assert len(keys['dos.npy']) >= 4  # four structures, four DOS
    np.testing.assert_array_equal(runs[0].outputs.dos.get_array('energies'), energy_grid())


def test_bench_counts_shared_nodes_once(labelled):
    spec = importlib.util.spec_from_file_location('bench_storage', BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(bench)
    runs = labelled.nodes('mc3d-rattled')
    measurement = bench.measure(runs)

    assert measurement.runs == 2
    level = 'Dict -> extract_dft_results.level_of_theory'
    assert level not in measurement.kinds, 'the level-of-theory node is shared, not stored per structure'
    assert measurement.kinds['Dict -> extract_dft_results.context'].database < measurement.theory_bytes
    assert measurement.kinds['Dict extract_dft_results.properties'].database < measurement.theory_bytes
    for kind in ('MadDftWorkChain', 'MadPwBaseWorkChain', 'PwCalculation', 'extract_dft_results'):
        assert measurement.kinds[kind].nodes == 2 and measurement.kinds[kind].database > 0
    nodes, database, repository, packed = measurement.per_structure(measurement.total)
    retrieved = measurement.kinds['FolderData PwCalculation.retrieved']
    assert retrieved.repository > 0 and 0 < retrieved.packed < retrieved.repository
    # The DOS values are per structure (36 976 bytes each), the grid is counted once among the shared objects.
    assert measurement.kinds['ArrayData extract_dft_results.dos'].repository == 2 * (128 + 8 * 4606)
    assert measurement.shared.repository >= 128 + 8 * 4606
    assert repository > packed > 0 and database > 0 and nodes > 20
