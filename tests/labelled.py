"""Real labelled data for the dataset tests: structures generated with provenance and labelled by the real pw.x.

:func:`labelled_data` builds, once per test session (again if a test wiped the profile), with the ``fast`` protocol:

* ``mc3d``: bulk Si (a seed structure, stored by hand as an imported structure would be), labelled twice at the same
  fingerprint (the second run is a duplicate), and a strained Si whose pw.x crashes (a failed result);
* ``mc3d-rattled``: two structures generated from the Si seed by the ``generate_structures`` calcfunction;
* ``shiftml-molfrags``: an H2 molecule (0D: no stress);
* the isolated atoms of Si and H (the baseline), and one more Si run at another level of theory (group ``mix``).

Work chains go to ``<prefix>/dft/<subset>`` groups, as the submission controller puts them.
"""

from __future__ import annotations

import contextlib
import dataclasses

from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node

PREFIX = 'test-dataset'
SEED_GROUP = f'{PREFIX}/structures/mc3d'
RATTLED_GROUP = f'{PREFIX}/structures/mc3d-rattled'
DFT_GROUPS = {subset: f'{PREFIX}/dft/{subset}' for subset in ('mc3d', 'mc3d-rattled', 'shiftml-molfrags')}
MIX_GROUP = f'{PREFIX}/dft/mix'
#: A level of theory other than `fast`'s: another k-point distance.
OTHER_LEVEL = {'kpoints_distance': 0.6}


@dataclasses.dataclass
class Labelled:
    """UUIDs of what :func:`labelled_data` made."""

    used: dict[str, list[str]]  # subset -> work chains that give frames
    duplicate: str
    failed: str
    other_level: str
    isolated_atoms: str

    def nodes(self, subset: str) -> list[orm.WorkflowNode]:
        """Return the used work chains of ``subset``."""
        return [orm.load_node(uuid) for uuid in self.used[subset]]

    def exists(self) -> bool:
        """Return whether every node is still in the profile (a test may have wiped it)."""
        try:
            for uuid in [
                *(uuid for uuids in self.used.values() for uuid in uuids),
                self.duplicate,
                self.failed,
                self.isolated_atoms,
            ]:
                orm.load_node(uuid)
        except NotExistent:
            return False
        return True


_CACHE: dict[str, Labelled] = {}


def _add(label: str, nodes) -> None:
    group, _ = orm.Group.collection.get_or_create(label)
    group.add_nodes(list(nodes))


def _run(code, structure, subset, overrides=None):
    from aiida_mad.workflows.dft import MadDftWorkChain

    builder = MadDftWorkChain.get_builder_from_protocol(code, structure, 'fast', overrides, subset=subset)
    _, node = run_get_node(builder)
    return node


def labelled_data(pw_code, crash_code) -> Labelled:
    """Return the labelled data, building it if needed (about a minute of pw.x on 2 cores)."""
    cached = _CACHE.get('data')
    if cached is not None and cached.exists():
        return cached
    from ase import Atoms
    from ase.build import bulk

    from aiida_mad.workflows.generate import StructureGeneration
    from aiida_mad.workflows.isolated_atoms import IsolatedAtomsWorkChain

    for label in [SEED_GROUP, RATTLED_GROUP, *DFT_GROUPS.values(), MIX_GROUP]:
        with contextlib.suppress(NotExistent):
            orm.Group.collection.delete(orm.load_group(label).pk)

    silicon = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))
    silicon.base.extras.set('mad_subset', 'mc3d')
    silicon.store()
    _add(SEED_GROUP, [silicon])
    generation = StructureGeneration(
        'mc3d-rattled', parent_groups=[SEED_GROUP], count=2, seed=11, group_label=RATTLED_GROUP
    )
    generation.run()
    rattled = sorted(orm.load_group(RATTLED_GROUP).nodes, key=lambda node: node.uuid)

    molecule = orm.StructureData(ase=Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.74]], pbc=False))
    molecule.base.extras.set('mad_subset', 'shiftml-molfrags')
    molecule.store()
    strained = orm.StructureData(ase=bulk('Si', 'diamond', a=5.6))
    strained.base.extras.set('mad_subset', 'mc3d')
    strained.store()

    used = {'mc3d': [_run(pw_code, silicon, 'mc3d')]}
    duplicate = _run(pw_code, silicon, 'mc3d')
    failed = _run(crash_code, strained, 'mc3d')
    used['mc3d-rattled'] = [_run(pw_code, structure, 'mc3d-rattled') for structure in rattled]
    used['shiftml-molfrags'] = [_run(pw_code, molecule, 'shiftml-molfrags')]
    other = _run(pw_code, silicon, 'mc3d', OTHER_LEVEL)
    for subset, nodes in used.items():
        _add(DFT_GROUPS[subset], nodes)
    _add(DFT_GROUPS['mc3d'], [duplicate, failed])
    _add(MIX_GROUP, [other, used['mc3d'][0]])

    atoms_builder = IsolatedAtomsWorkChain.get_builder_from_protocol(pw_code, ['H', 'Si'], 'fast')
    _, isolated = run_get_node(atoms_builder)

    for node in [*(node for nodes in used.values() for node in nodes), duplicate, other, isolated]:
        assert node.is_finished_ok, f'{node.process_label}<{node.pk}>: {node.exit_status} {node.exit_message}'
    assert failed.is_failed, 'the crashing code should make the run fail'
    data = Labelled(
        used={subset: [node.uuid for node in nodes] for subset, nodes in used.items()},
        duplicate=duplicate.uuid,
        failed=failed.uuid,
        other_level=other.uuid,
        isolated_atoms=isolated.uuid,
    )
    _CACHE['data'] = data
    return data
