"""``IsolatedAtomsWorkChain`` (``mad.dft.isolated_atoms``): reference energies of isolated atoms at one level of theory.

Every element of the pool gets one ``MadDftWorkChain`` on a single atom in a box (0D rules: vacuum, Martyna-Tuckerman,
Γ only, ``nspin = 1``), with exactly the inputs of the structures it will serve as a baseline for: the fingerprint of
the table equals theirs. The table is the compositional baseline of the datasets (``E - Σ E_atom``).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import WorkChain
from ase import Atoms

from aiida_mad.calculations.dft import collect_atomic_energies, isolated_atom
from aiida_mad.constants import ISOLATED_ATOM_SUBSET
from aiida_mad.structures.elements import UnknownElementError, validate_symbols
from aiida_mad.workflows.dft import MadDftWorkChain

__all__ = ('IsolatedAtomsWorkChain',)


class IsolatedAtomsWorkChain(WorkChain):
    """Run one isolated atom per element and collect the reference energies with their fingerprint."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('elements', valid_type=orm.List, help='Chemical symbols of the elements to compute.')
        spec.expose_inputs(MadDftWorkChain, namespace='dft', exclude=('structure', 'subset'))
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.run_atoms, cls.results)
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
        return None

    @classmethod
    def get_builder_from_protocol(cls, code, elements, protocol=None, overrides=None, *, options=None):
        """Return a builder for ``elements`` at the level of theory of ``protocol`` (same inputs as the structures)."""
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
        for key in ('pseudo_family', 'kpoints_distance', 'rules', 'outlier_max_force', 'bands_factor', 'scf'):
            if key in template:
                builder.dft[key] = template[key]
        builder.metadata.label = f'mad.dft.isolated_atoms [{protocol or "mad"}] {len(elements)} elements'
        return builder

    def run_atoms(self):
        """Submit one ``MadDftWorkChain`` per element, all at once."""
        for element in self.inputs.elements.get_list():
            inputs = AttributeDict(self.exposed_inputs(MadDftWorkChain, namespace='dft'))
            inputs.structure = isolated_atom(orm.Str(element), metadata={'call_link_label': f'atom_{element}'})
            inputs.subset = orm.Str(ISOLATED_ATOM_SUBSET)
            inputs.metadata = {'call_link_label': f'dft_{element}', 'label': f'isolated atom {element}'}
            self.to_context(**{f'atom_{element}': self.submit(MadDftWorkChain, **inputs)})

    def results(self):
        """Collect the energies of the atoms that finished; report the others by exit code."""
        energies, properties, failed = {}, {}, []
        for element in self.inputs.elements.get_list():
            node = self.ctx[f'atom_{element}']
            if node.is_finished_ok:
                energies[element] = node.outputs.energy
                properties[element] = node.outputs.properties
            else:
                failed.append(f'{element} (exit status {node.exit_status})')
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
