"""The aiida-core internals that :mod:`aiida_mad.calculations.bulk` uses exist, and have not changed since read.

When aiida-core is upgraded and one of these tests fails, re-read the aiida-core code named in the failure against
``aiida_mad/calculations/bulk.py`` (the bulk-linked process class copies what ``Process._setup_inputs`` and
``Process.update_outputs`` do, swaps ``Node._CLS_NODE_CACHING`` in ``_setup_db_record``, and reproduces
``ProcessNodeCaching.get_objects_to_hash``), fix ``bulk.py`` if needed, run ``tests/calculations`` and
``tests/workflows/test_dataset.py``, then update :data:`PINNED` with the hashes printed in the failure.
"""

from __future__ import annotations

import functools
import hashlib
import inspect

import numpy as np
import pytest
from aiida import orm
from aiida.engine.processes.functions import FunctionProcess
from aiida.engine.processes.process import Process
from aiida.orm.nodes.caching import NodeCaching
from aiida.orm.nodes.data.structure import StructureData
from aiida.orm.nodes.links import NodeLinks
from aiida.orm.nodes.node import Node, NodeBase
from aiida.orm.nodes.process.process import ProcessNodeCaching
from aiida.orm.nodes.repository import NodeRepository
from aiida.orm.utils.links import LinkTriple
from aiida.storage.psql_dos.backend import PsqlDosBackend
from aiida.storage.psql_dos.orm.nodes import SqlaNode
from aiida.storage.psql_dos.orm.utils import disable_expire_on_commit
from aiida.storage.sqlite_dos.backend import SqliteDosStorage

from aiida_mad.calculations.bulk import (
    StoredInputHashCaching,
    add_nodes_by_pk,
    bulk_link_process_class,
    read_arrays,
    store_new_nodes,
    stored_pks,
)
from aiida_mad.calculations.generate import BulkLinkGenerateStructures, generate_structures, run_generate_structures
from aiida_mad.storage import store_seeds
from aiida_mad.workflows.generate import GenerationProgress, StructureGeneration

#: What bulk.py overrides or relies on, and the sha256 (first 16 hex digits) of its source in aiida-core 2.9.4.
OVERRIDDEN = {
    'Process._setup_db_record': Process._setup_db_record,
    'Process._setup_inputs': Process._setup_inputs,
    'Process.update_outputs': Process.update_outputs,
    'Process._build_process_label': Process._build_process_label,
    'Process.build_process_type': Process.build_process_type,
    'Process._flat_inputs': Process._flat_inputs,
    'Process._flat_outputs': Process._flat_outputs,
    'FunctionProcess._setup_db_record': FunctionProcess._setup_db_record,
    'FunctionProcess.run': FunctionProcess.run,
    'NodeCaching.get_objects_to_hash': NodeCaching.get_objects_to_hash,
    'ProcessNodeCaching.get_objects_to_hash': ProcessNodeCaching.get_objects_to_hash,
    'Node._store': Node._store,
    'NodeLinks.__init__': NodeLinks.__init__,
    'NodeBase.caching': NodeBase.caching.func,
    'PsqlDosBackend._get_mapper_from_entity': PsqlDosBackend._get_mapper_from_entity,
    'SqliteDosStorage._get_mapper_from_entity': SqliteDosStorage._get_mapper_from_entity,
    # store_new_nodes does what these do for one node, for many at once:
    'Node.store': Node.store,
    'NodeCaching._compute_hash': NodeCaching._compute_hash,
    'NodeCaching.rehash': NodeCaching.rehash,
    'NodeRepository._store': NodeRepository._store,
    'SqlaNode.store': SqlaNode.store,
    'disable_expire_on_commit': disable_expire_on_commit.__wrapped__,
    # structure_from_ase (aiida_mad/calculations/generate.py) reproduces these:
    'StructureData.set_ase': StructureData.set_ase,
    'StructureData.append_atom': StructureData.append_atom,
}
PINNED = {
    'Process._setup_db_record': 'b5bea8767c6512b0',
    'Process._setup_inputs': 'b9a7f31e031d555e',
    'Process.update_outputs': '9858a0f5df640a53',
    'Process._build_process_label': 'a3c7697430d14162',
    'Process.build_process_type': 'aa7256d04af87bea',
    'Process._flat_inputs': 'fc13bfc5db5a1e6d',
    'Process._flat_outputs': 'b7ff75ea99b96a37',
    'FunctionProcess._setup_db_record': 'f3de75bafb8dc94c',
    'FunctionProcess.run': 'dd56e0786bc57765',
    'NodeCaching.get_objects_to_hash': '797a8e34fcfb14ea',
    'ProcessNodeCaching.get_objects_to_hash': '38e13bf7636ad912',
    'Node._store': '1ca29cb227d6b53c',
    'NodeLinks.__init__': '5d59f163e39b88e0',
    'NodeBase.caching': 'ebdc7a79bb5a966b',
    'PsqlDosBackend._get_mapper_from_entity': 'b923406508b45d2b',
    'SqliteDosStorage._get_mapper_from_entity': '8e88e7599c646cbd',
    'Node.store': 'd9a997971ab6e4a1',
    'NodeCaching._compute_hash': '08bf73a8388fef84',
    'NodeCaching.rehash': '49e33d4391778d11',
    'NodeRepository._store': 'da9b10549979ebf4',
    'SqlaNode.store': '19edd8ba1cbb620d',
    'disable_expire_on_commit': '6fa10fbbebc972e2',
    'StructureData.set_ase': 'cc9640ec78c90fc6',
    'StructureData.append_atom': 'f2028fac49d63790',
}


def source_hash(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_overridden_aiida_core_code_is_unchanged():
    changed = {
        name: source_hash(function) for name, function in OVERRIDDEN.items() if source_hash(function) != PINNED[name]
    }
    assert not changed, (
        f'aiida-core changed code that aiida_mad/calculations/bulk.py overrides or copies: {", ".join(changed)}. '
        'Re-read it against bulk.py (see this module docstring), then pin the new hashes: '
        + ', '.join(f'{name!r}: {value!r}' for name, value in changed.items())
    )


@pytest.mark.parametrize(
    ('owner', 'name'),
    [
        (Process, '_setup_db_record'),
        (Process, '_setup_inputs'),
        (Process, 'update_outputs'),
        (Process, '_build_process_label'),
        (Process, '_flat_inputs'),
        (Process, '_flat_outputs'),
    ],
)
def test_overridden_methods_take_only_self(owner, name):
    parameters = list(inspect.signature(getattr(owner, name)).parameters)
    assert parameters == ['self'], f'{owner.__name__}.{name}{inspect.signature(getattr(owner, name))}'


def test_private_attributes_used_exist():
    assert Node._CLS_NODE_CACHING is NodeCaching
    assert isinstance(inspect.getattr_static(NodeBase, 'caching'), functools.cached_property)
    assert ProcessNodeCaching._HASH_EXTRA_KEY == '_aiida_hash'
    assert 'CALL_CALC' in ProcessNodeCaching._hash_ignored_inputs
    assert LinkTriple._fields == ('node', 'link_type', 'link_label')
    node = orm.Int(1)
    assert node.base.links.incoming_cache == []
    assert 'caching' in dir(node.base)
    assert isinstance(node.base.caching, NodeCaching)
    assert 'caching' in node.base.__dict__  # cached on first use: bulk.py drops it to swap the class
    assert issubclass(StoredInputHashCaching, ProcessNodeCaching)


@pytest.mark.usefixtures('aiida_profile_clean')
def test_repository_layout_read_in_bulk():
    # read_arrays reads `repository_metadata` as {'o': {file name: {'k': key}}} and streams the keys in one pass.
    from aiida.manage import get_manager

    node = orm.ArrayData({'forces': np.arange(6.0).reshape(2, 3)}).store()
    (metadata,) = orm.QueryBuilder().append(orm.Node, filters={'id': node.pk}, project='repository_metadata').one()
    key = metadata['o']['forces.npy']['k']
    repository = get_manager().get_profile_storage().get_repository()
    streams = dict(repository.iter_object_streams([key]))
    assert set(streams) == {key}
    assert read_arrays({'a': node}, 'forces')['a'].tolist() == node.get_array('forces').tolist()


@pytest.mark.usefixtures('aiida_profile_clean')
def test_bulk_linked_node_has_the_plain_nodes_process_type_label_and_hash():
    store_seeds(['bulk'])
    generation = StructureGeneration('mc3d-rattled', count=3, seed=5)
    items = generation.next_batch(GenerationProgress())
    _, plain = generate_structures.run_get_node(**generation.batch_inputs(items))
    _, bulk = run_generate_structures(**generation.batch_inputs(items))
    assert bulk.process_type == plain.process_type == 'aiida.calculations:mad.generate_structures'
    assert bulk.process_label == plain.process_label == 'generate_structures'
    assert BulkLinkGenerateStructures.bulk_linked_function is generate_structures
    # The stored hash (inputs hashed by their stored hashes) is the one aiida-core computes from scratch.
    assert bulk.base.caching.get_hash() == plain.base.caching.get_hash()
    assert orm.load_node(bulk.pk).base.caching.compute_hash() == bulk.base.caching.get_hash()


@pytest.mark.usefixtures('aiida_profile_clean')
def test_store_new_nodes_stores_what_store_stores():
    from aiida.common.links import LinkType

    source = orm.Int(3).store()
    nodes = [orm.ArrayData({'forces': np.arange(6.0).reshape(2, 3)}), orm.Dict({'a': np.float64(1.5), 'b': (1, 2)})]
    for number, node in enumerate(nodes):
        node.base.links.incoming_cache.append(LinkTriple(source, LinkType.INPUT_CALC, f'in{number}'))
    with pytest.raises(ValueError, match='stored already'):
        store_new_nodes([source])
    store_new_nodes(nodes)
    reference = orm.ArrayData({'forces': np.arange(6.0).reshape(2, 3)}).store()

    loaded = [orm.load_node(pk) for pk in stored_pks(nodes)]
    assert loaded[0].get_array('forces').tolist() == reference.get_array('forces').tolist()
    assert loaded[0].base.repository.metadata == reference.base.repository.metadata
    assert loaded[0].base.extras.get('_aiida_hash') == reference.base.extras.get('_aiida_hash')
    assert loaded[1].get_dict() == {'a': 1.5, 'b': [1, 2]}  # cleaned as store() cleans
    for number, node in enumerate(loaded):
        assert node.base.caching.compute_hash() == node.base.extras.get('_aiida_hash')
        (link,) = node.base.links.get_incoming().all()
        assert (link.node.pk, link.link_type, link.link_label) == (source.pk, LinkType.INPUT_CALC, f'in{number}')
    group = orm.Group('bulk').store()
    add_nodes_by_pk(group, stored_pks(nodes))
    assert sorted(node.pk for node in group.nodes) == sorted(node.pk for node in loaded)


def test_bulk_link_class_is_made_per_calcfunction():
    assert bulk_link_process_class(generate_structures).build_process_type() == (
        generate_structures.process_class.build_process_type()
    )


def test_source_hash_changes_with_the_source():
    def one():
        return 1

    def two():
        return 2

    assert source_hash(one) != source_hash(two)
