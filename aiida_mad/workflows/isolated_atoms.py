"""``IsolatedAtomsWorkChain`` (``mad.dft.isolated_atoms``): reference energies of isolated atoms at one level of theory.

Every element of the pool gets one ``MadDftWorkChain`` on a single atom in a box (0D rules: vacuum, Martyna-Tuckerman,
Γ only, ``nspin = 1``), with exactly the inputs of the structures it will serve as a baseline for: the fingerprint of
the table equals theirs. The table is the compositional baseline of the datasets (``E - Σ E_atom``).

The atoms run in batches of at most ``max_concurrent`` (each batch waits for the previous one), so that a pool of
dozens of elements never starts dozens of pw.x at once on a workstation. An element whose run fails is reported by
name and exit status; the energies of the others are still returned.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, while_
from ase import Atoms

from aiida_mad.calculations.dft import collect_atomic_energies, isolated_atom
from aiida_mad.constants import ISOLATED_ATOM_SUBSET
from aiida_mad.structures.elements import UnknownElementError, validate_symbols
from aiida_mad.workflows.dft import MadDftWorkChain

__all__ = ('DEFAULT_MAX_CONCURRENT', 'IsolatedAtomsWorkChain')

#: Atoms running at once unless ``max_concurrent`` says otherwise (the CLI sets it from the computer's cores).
DEFAULT_MAX_CONCURRENT = 4


class IsolatedAtomsWorkChain(WorkChain):
    """Run one isolated atom per element and collect the reference energies with their fingerprint."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('elements', valid_type=orm.List, help='Chemical symbols of the elements to compute.')
        spec.input(
            'max_concurrent',
            valid_type=orm.Int,
            default=lambda: orm.Int(DEFAULT_MAX_CONCURRENT),
            help='Most atoms running at once (they run in batches of this size).',
        )
        spec.expose_inputs(MadDftWorkChain, namespace='dft', exclude=('structure', 'subset'))
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.setup, while_(cls.atoms_left)(cls.run_atoms), cls.results)
        spec.output('energies', valid_type=orm.Dict, help='Energy (eV) of each isolated atom, by element.')
        spec.output('fingerprint', valid_type=orm.Str, help='Level-of-theory fingerprint shared by every energy.')
        spec.exit_code(
            310,
            'ERROR_ATOMS_FAILED',
            message='the isolated-atom runs of {elements} failed; the others are in `energies`',
        )
        spec.exit_code(320, 'ERROR_FINGERPRINTS_DIFFER', message='the atoms were computed at different levels: {found}')

    @staticmethod
    def validate_inputs(value, _):
        """Refuse an empty list, duplicates and symbols that are no elements."""
        elements = value['elements'].get_list() if 'elements' in value else []
        if not elements:
            return 'the list of elements is empty'
        duplicates = sorted({element for element in elements if elements.count(element) > 1})
        if duplicates:
            return f'elements listed twice: {", ".join(duplicates)}'
        try:
            validate_symbols(elements)
        except UnknownElementError as exception:
            return str(exception)
        if 'max_concurrent' in value and value['max_concurrent'].value < 1:
            return f'max_concurrent must be at least 1, got {value["max_concurrent"].value}'
        return None

    @classmethod
    def get_builder_from_protocol(
        cls, code, elements, protocol=None, overrides=None, *, options=None, max_concurrent: int | None = None
    ):
        """Return a builder for ``elements`` at the level of theory of ``protocol`` (same inputs as the structures).

        :param max_concurrent: most atoms running at once (default :data:`DEFAULT_MAX_CONCURRENT`).
        """
        elements = list(elements)
        # Validate every atom the same way the structures are validated, before anything is stored.
        problems = []
        template = None
        for element in elements:
            atom = orm.StructureData(ase=Atoms(element, positions=[[0.0, 0.0, 0.0]], pbc=False))
            try:
                template = MadDftWorkChain.get_builder_from_protocol(
                    code, atom, protocol, overrides, subset=ISOLATED_ATOM_SUBSET, options=options
                )
            except ValueError as exception:
                problems.append(str(exception))
        if problems:
            raise ValueError('; '.join(problems))
        builder = cls.get_builder()
        builder.elements = orm.List(elements)
        if max_concurrent is not None:
            builder.max_concurrent = orm.Int(max_concurrent)
        for key in ('pseudo_family', 'kpoints_distance', 'rules', 'outlier_max_force', 'bands_factor', 'scf'):
            if key in template:
                builder.dft[key] = template[key]
        builder.metadata.label = f'mad.dft.isolated_atoms [{protocol or "mad"}] {len(elements)} elements'
        return builder

    def setup(self):
        """Queue the elements in the given order."""
        self.ctx.queue = list(self.inputs.elements.get_list())
        self.ctx.done = 0

    def atoms_left(self):
        """Return whether elements are still queued."""
        return bool(self.ctx.queue)

    def run_atoms(self):
        """Submit the next batch of at most ``max_concurrent`` atoms and wait for all of them."""
        total = len(self.inputs.elements)
        batch, self.ctx.queue = (
            self.ctx.queue[: self.inputs.max_concurrent.value],
            self.ctx.queue[self.inputs.max_concurrent.value :],
        )
        futures = {}
        for element in batch:
            inputs = AttributeDict(self.exposed_inputs(MadDftWorkChain, namespace='dft'))
            inputs.structure = isolated_atom(orm.Str(element), metadata={'call_link_label': f'atom_{element}'})
            inputs.subset = orm.Str(ISOLATED_ATOM_SUBSET)
            inputs.metadata = {'call_link_label': f'dft_{element}', 'label': f'isolated atom {element}'}
            futures[f'atom_{element}'] = self.submit(MadDftWorkChain, **inputs)
        self.report(
            f'atoms {self.ctx.done + 1}-{self.ctx.done + len(batch)} of {total}: {", ".join(batch)} '
            f'({len(self.ctx.queue)} queued)'
        )
        self.ctx.done += len(batch)
        return ToContext(**futures)

    def results(self):
        """Collect the energies of the atoms that finished; report the others by exit code."""
        energies, properties, failed = {}, {}, []
        for element in self.inputs.elements.get_list():
            node = self.ctx[f'atom_{element}']
            if node.is_finished_ok:
                energies[element] = node.outputs.energy
                properties[element] = node.outputs.properties
            else:
                failed.append(f'{element} (MadDftWorkChain<{node.pk}> exit status {node.exit_status})')
        fingerprints = sorted({node['fingerprint'] for node in properties.values()})
        if len(fingerprints) > 1:
            return self.exit_codes.ERROR_FINGERPRINTS_DIFFER.format(found=fingerprints)
        if energies:
            # The fingerprint is an output of the calcfunction, traced back to the runs' properties: no orphan node.
            table = collect_atomic_energies(
                energies=energies, properties=properties, metadata={'call_link_label': 'collect_atomic_energies'}
            )
            self.out('energies', table['energies'])
            self.out('fingerprint', table['fingerprint'])
        if failed:
            return self.exit_codes.ERROR_ATOMS_FAILED.format(elements=', '.join(failed))
        return None
