"""The stages of ``aiida-mad demo``: the whole data pipeline on a few tiny structures, resumable.

:class:`Demo` runs, in order (:data:`STAGES`):

1. ``structures``: the bundled seeds; one small seed per imported subset (bulk Si, a BN monolayer, the CO2 molecular
   crystal) and one generated structure of every generated subset (:data:`GENERATION`), from those seeds, with the
   elements of :data:`DEMO_ELEMENTS` that the pseudopotential family has (MP-ALOE: Si on the diamond prototype, see
   :data:`MP_ALOE_PROTOTYPE`); all of them also in :data:`STRUCTURES_GROUP`;
2. ``labelling``: the ``demo`` protocol through the daemon and the submission controller, into :data:`DFT_GROUP`;
3. ``isolated-atoms``: the reference energies of the elements present, at the same level of theory;
4. ``dataset``: the dataset :data:`DATASET_NAME`;
5. ``export``: the ``xyz`` exports and the Materials Cloud record folder (with its HTML report);
6. ``training``: a tiny PET model (``TrainWorkChain``, protocol ``tiny``), when a metatrain code is given;
7. ``evaluate``: its errors per subset and rotational symmetry error on the dataset's test split
   (``EvaluateWorkChain`` with the ``aiida-mad-predict`` code of the training code's computer), with the training;
8. ``active-learning``: one iteration of ``ActiveLearningWorkChain`` on the dataset (:data:`ACTIVE_LEARNING`): a
   committee of 2 tiny MACE models, a pool of 20 MP-ALOE candidates, at most 2 of them labelled with the ``demo``
   protocol; with the training, and skipped (one line) when the training code's computer has no ``mad.mace`` code.

Every stage first looks at what exists (groups, generation keys, finished work chains, the dataset by name, folders
with the export marker) and does only what is missing, so that a re-run after an interruption repeats nothing. The
pw.x runs never ask for more MPI ranks in all than the computer has cores. Each stage reports one line when it starts
and one when it is done through the ``report`` callable (plain lines: they also show when not on a terminal).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable

from aiida import orm

from aiida_mad.constants import ALL_SUBSETS, process_type

__all__ = (
    'DATASET_NAME',
    'DEMO_ELEMENTS',
    'DFT_GROUP',
    'GROUP_PREFIX',
    'PROTOCOL',
    'STAGES',
    'STRUCTURES_GROUP',
    'Demo',
    'DemoError',
    'DemoResult',
    'demo_concurrency',
)

#: The stages, in the order they run.
STAGES = ('structures', 'labelling', 'isolated-atoms', 'dataset', 'export', 'training', 'evaluate', 'active-learning')

#: The stages that need the training code (they run on its computer).
TRAINING_STAGES = ('training', 'evaluate', 'active-learning')

#: Prefix of every group of the demo: the demo never mixes with the ``mad/...`` groups of real work.
GROUP_PREFIX = 'mad-demo'

#: Every structure of the demo, the parent group of the submission controller.
STRUCTURES_GROUP = f'{GROUP_PREFIX}/structures'

#: The ``MadDftWorkChain`` nodes of the demo.
DFT_GROUP = f'{GROUP_PREFIX}/dft'

#: The name of the demo's dataset.
DATASET_NAME = 'mad-demo'

#: The protocol of the labelling and of the isolated atoms: the offline family at cutoffs chosen by a convergence
#: test (pressures within a few GPa, forces within 0.01 eV/Å), not the smoke-test ``fast`` protocol of the tests.
PROTOCOL = 'demo'

#: The protocol of the training.
TRAINING_PROTOCOL = 'tiny'

#: The seeds of the imported subsets (``mad_seed_name`` extras of the bundled seeds): 2, 2 and 12 atoms.
IMPORTED_SEEDS = {'mc3d': 'bulk/Si-diamond', 'mc2d': '2d/BN-monolayer', 'shiftml-molcrys': 'molcrys/CO2-Pa-3'}

#: The element pool of the generators: the elements of the imported seeds, so that few isolated atoms are needed.
DEMO_ELEMENTS = ('B', 'C', 'N', 'O', 'Si')

#: Count and parameters of each generated subset: tiny cells (at most 4 atoms), one structure each.
GENERATION = {
    'mc3d-rattled': {'count': 1, 'parameters': {}},
    'mc3d-random': {'count': 1, 'parameters': {}},
    'mc3d-surface': {'count': 1, 'parameters': {'max_index': 1, 'min_slab_size': 4.0, 'vacuum': 6.0, 'max_atoms': 4}},
    'mc3d-cluster': {'count': 1, 'parameters': {'min_atoms': 2, 'max_atoms': 3}},
    'shiftml-molfrags': {'count': 1, 'parameters': {}},
    'mp-aloe': {'count': 1, 'parameters': {}},
}

#: The MP-ALOE structure of the demo: Si on the diamond prototype, scrambled and strained as MP-ALOE does, close to
#: equilibrium. Random elements of the whole pool (B, C, N, O, Si) on a random small prototype, at the lattice guess
#: of atomic radii, can put N or O pairs at 1.2-1.3 Å in a crystal: the demo's MP-ALOE structure was an outlier
#: (forces above 10 eV/Å) in a trial.
MP_ALOE_PROTOTYPE = 'A_cF8_227_a:C'
MP_ALOE_ELEMENTS = ('Si',)

#: The split fractions of the demo's dataset: with about ten frames, a validation split that is not empty.
FRACTIONS = (0.6, 0.2, 0.2)

#: Dataset seeds tried until the train and validation splits both hold a periodic frame (see :func:`choose_seed`).
MAX_SEEDS = 1000

#: Extra on the isolated-atom work chains the demo submits: the fingerprint they were computed for.
ISOLATED_ATOMS_EXTRA = 'mad_demo_fingerprint'

#: Extra on the training work chain the demo submits: the UUID of the dataset it trains on.
TRAINING_EXTRA = 'mad_demo_dataset'

#: Extra on the evaluation work chain the demo submits: the UUID of the model it evaluates.
EVALUATION_EXTRA = 'mad_demo_model'

#: Extra on the active-learning work chain the demo submits: the UUID of the dataset it starts from.
ACTIVE_LEARNING_EXTRA = 'mad_demo_al_dataset'

#: The active-learning stage: one iteration, a committee of 2 tiny MACE models, 20 MP-ALOE candidates of Si (an
#: element every committee member knows) with at most 2 atoms, thresholds low enough for the tiny committee to
#: disagree, DIRECT down to 2 structures to label.
ACTIVE_LEARNING = {
    'name': 'mad-demo',
    'committee_protocol': 'tiny',
    'members': 2,
    'pool': {'count': 20, 'batch_size': 20, 'seed': 0, 'prototypes': {'max_atoms': 2}, 'element_pool': ['Si']},
    'thresholds': {'energy': 1e-4, 'force': 1e-3, 'stress': 1e-4},
    'direct': {'n_clusters': 2, 'per_cluster': 1},
    'max_iterations': 1,
}

#: The record metadata of the demo: a test-grade dataset, described as such.
RECORD_METADATA = {
    'title': 'aiida-mad demo dataset (test-grade level of theory, not for publication)',
    'keywords': ['aiida-mad', 'demo', 'machine learning', 'DFT'],
    'license': 'CC-BY-4.0',
    'references': [
        {
            'type': 'Preprint',
            'citation': 'Mazitov et al., PET-MAD, a universal interatomic potential for advanced materials modeling '
            '(2025)',
            'url': 'https://arxiv.org/abs/2503.14118',
        }
    ],
}


class DemoError(RuntimeError):
    """A stage of the demo could not go on; the message names the stage, the node and what to do."""


@dataclasses.dataclass
class DemoResult:
    """What the demo made: the pks and folders to explore."""

    structures: int = 0
    labelled: int = 0
    failed: list[int] = dataclasses.field(default_factory=list)
    atomic_energies: dict[str, float] = dataclasses.field(default_factory=dict)
    failed_elements: list[str] = dataclasses.field(default_factory=list)
    dataset: orm.Node | None = None
    export_dir: pathlib.Path | None = None
    record_dir: pathlib.Path | None = None
    training: orm.WorkflowNode | None = None
    stages: list[str] = dataclasses.field(default_factory=list)


def demo_concurrency(code: orm.AbstractCode, num_mpiprocs: int | None = None) -> tuple[int, int]:
    """Return ``(MPI ranks per pw.x, pw.x runs at once)`` so that their product does not exceed the cores.

    The cores are the computer's default MPI processes per machine (what ``aiida-mad setup localhost`` sets), else
    those of this machine. Tiny cells run faster as several one-rank runs than as one run on every core.
    """
    cores = code.computer.get_default_mpiprocs_per_machine() or os.cpu_count() or 1
    ranks = min(num_mpiprocs or 1, cores)
    return ranks, max(1, cores // ranks)


class Demo:
    """The demo's stages; :meth:`run` runs them in order, each skipping what already exists.

    :param code: the pw.x code.
    :param pseudo_family: label of the pseudopotential family to label with.
    :param output_dir: folder of the exports (created; ``export/`` and ``record/`` go in it).
    :param train_code: the metatrain (``mtt``) code, or ``None`` to skip the training.
    :param timeout: seconds to wait for the work chains of one stage before giving up waiting (they go on).
    :param interval: seconds between two checks of running work chains.
    :param num_mpiprocs: MPI ranks of each pw.x (default 1; the concurrency follows, see :func:`demo_concurrency`).
    :param report: called with each progress line.
    """

    def __init__(
        self,
        code: orm.AbstractCode,
        pseudo_family: str,
        output_dir: os.PathLike | str,
        *,
        train_code: orm.AbstractCode | None = None,
        timeout: float = 1800,
        interval: float = 2.0,
        num_mpiprocs: int | None = None,
        report: Callable[[str], None] = print,
    ):
        self.code = code
        self.pseudo_family = pseudo_family
        self.output_dir = pathlib.Path(output_dir).absolute()
        self.train_code = train_code
        self.timeout = timeout
        self.interval = interval
        self.ranks, self.max_concurrent = demo_concurrency(code, num_mpiprocs)
        self.report = report
        self.result = DemoResult()
        self._controller = None
        self._stage_start = time.monotonic()

    # -- helpers -----------------------------------------------------------------------------------------------------

    @property
    def options(self) -> dict:
        """The ``metadata.options`` of every pw.x run."""
        return {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': self.ranks}}

    @property
    def overrides(self) -> dict:
        """The protocol overrides of every pw.x run."""
        return {'pseudo_family': self.pseudo_family}

    def family_elements(self) -> set[str]:
        """Return the elements of the pseudopotential family."""
        from aiida_mad.workflows.dft import load_family

        try:
            return set(load_family(self.pseudo_family).elements)
        except ValueError as exception:
            raise DemoError(str(exception)) from None

    def _wait(self, what: str, nodes: Callable[[], list[orm.ProcessNode]], line: Callable[[], str]) -> None:
        """Wait until every node that ``nodes`` returns is terminated, reporting ``line()`` whenever it changes."""
        start = time.monotonic()
        last = None
        while True:
            running = [node for node in nodes() if not node.is_terminated]
            text = line()
            if text != last:
                self.report(f'  {text} ({time.monotonic() - self._stage_start:.0f} s)')
                last = text
            if not running:
                return
            if time.monotonic() - start > self.timeout:
                pks = ', '.join(str(node.pk) for node in running)
                raise DemoError(
                    f'{what}: still running after {self.timeout:.0f} s ({pks}); they go on in the daemon: run the demo '
                    'again later to continue'
                )
            time.sleep(self.interval)

    def _work_chains(self, process_type_: str, extra: str, value: str) -> list[orm.WorkflowNode]:
        """Return the work chains of type ``process_type_`` that the demo marked with ``extra`` = ``value``."""
        query = orm.QueryBuilder().append(
            orm.WorkflowNode, filters={'process_type': process_type_, f'extras.{extra}': value}
        )
        return query.all(flat=True)

    def _run_once(
        self, stage: str, process_class: type, extra: str, value: str, builder: Callable[[], object]
    ) -> tuple[orm.WorkflowNode, bool]:
        """Run one work chain of ``process_class`` for ``value`` through the daemon, unless one runs or finished.

        The work chains of the class marked with the extra ``extra`` = ``value`` are the stage's: when none is running
        and none finished, ``builder()`` is submitted and marked; then every one of them is waited for, with a progress
        line whenever their states change, and the finished one (else the newest) is taken.

        :param stage: the stage, named in the progress and the errors.
        :param builder: returns the builder to submit; called only when submitting (a ``ValueError`` it raises, or the
            validation of its inputs, fails the stage with its message).
        :return: the work chain and whether it had finished before this run.
        :raises DemoError: if the builder cannot be made, or if the work chain taken did not finish successfully (the
            message names it and the command to inspect it).
        """
        from aiida_mad.controllers.broker import submit  # aiida's, connected anew after a daemon restart

        name = process_class.__name__

        def submitted() -> list[orm.WorkflowNode]:
            return self._work_chains(process_class.build_process_type(), extra, value)

        def line() -> str:
            states = [node.process_state.value if node.process_state else 'created' for node in submitted()]
            return f'{name} {", ".join(states)}'

        nodes = submitted()
        finished = any(node.is_finished_ok for node in nodes)
        if not finished and all(node.is_terminated for node in nodes):
            try:
                submitted_now = submit(builder())
            except ValueError as exception:  # also the validation of the inputs when submitting
                raise DemoError(f'{stage}: {exception}') from None
            submitted_now.base.extras.set(extra, value)
        self._wait(stage, submitted, line)
        node = max(submitted(), key=lambda node: (node.is_finished_ok, node.ctime))
        if not node.is_finished_ok:
            raise DemoError(
                f'{stage}: {name}<{node.pk}> failed: {node.exit_status} {node.exit_message}; inspect it with '
                f'`verdi process report {node.pk}`'
            )
        return node, finished

    # -- stages ------------------------------------------------------------------------------------------------------

    def run(self, *, until: str | None = None) -> DemoResult:
        """Run the stages in order, up to and including ``until`` (default: all; training only with a code)."""
        if until is not None and until not in STAGES:
            raise DemoError(f'unknown stage {until!r}: choose one of {", ".join(STAGES)}')
        last = STAGES.index(until) if until is not None else len(STAGES) - 1
        steps = [stage for stage in STAGES[: last + 1] if stage not in TRAINING_STAGES or self.train_code is not None]
        for number, stage in enumerate(steps, start=1):
            self.report(f'[{number}/{len(steps)}] {stage}: {STAGE_DESCRIPTIONS[stage]}')
            start = self._stage_start = time.monotonic()
            summary = getattr(self, f'stage_{stage.replace("-", "_")}')()
            self.report(f'[{number}/{len(steps)}] {stage}: {summary} ({time.monotonic() - start:.0f} s)')
            self.result.stages.append(stage)
        return self.result

    def stage_structures(self) -> str:
        """Store the seeds, put the chosen seeds in their demo groups and generate every other subset."""
        from aiida_mad.storage import get_or_create_group, store_seeds
        from aiida_mad.structures.registry import GenerationError
        from aiida_mad.workflows.generate import StructureGeneration

        available = self.family_elements()
        stored = store_seeds()
        new_seeds = sum(count for count, _ in stored.values())
        pool = [element for element in DEMO_ELEMENTS if element in available]

        for subset, seed_name in IMPORTED_SEEDS.items():
            query = orm.QueryBuilder().append(
                orm.StructureData, filters={'extras.mad_seed_name': seed_name}, project='*'
            )
            node = query.first(flat=True)
            lacking = sorted(set(node.get_symbols_set()) - available)
            if lacking:
                raise DemoError(
                    f'structures: the seed {seed_name} has {", ".join(lacking)}, which pseudopotential family '
                    f'{self.pseudo_family} lacks: choose a family with {", ".join(DEMO_ELEMENTS)}'
                )
            get_or_create_group(subset_group_label(subset)).add_nodes([node])

        made = 0
        for subset, settings in GENERATION.items():
            subset_pool = pool
            if subset == 'mp-aloe':
                prototypes = orm.load_group(label='mad/seeds/prototypes').nodes
                parents = [node for node in prototypes if node.base.extras.get('mad_prototype') == MP_ALOE_PROTOTYPE]
                if not parents:
                    raise DemoError(f'structures: no stored prototype {MP_ALOE_PROTOTYPE} in mad/seeds/prototypes')
                subset_pool = [element for element in MP_ALOE_ELEMENTS if element in available] or pool
                groups = []
            else:
                parents = []
                source = 'shiftml-molcrys' if subset == 'shiftml-molfrags' else 'mc3d'
                groups = [subset_group_label(source)]
            try:
                generation = StructureGeneration(
                    subset,
                    parent_groups=groups,
                    parents=parents,
                    count=settings['count'],
                    parameters=settings['parameters'],
                    element_pool=subset_pool,
                    available_elements=available,
                    group_label=subset_group_label(subset),
                )
                progress = generation.run()
            except GenerationError as exception:
                raise DemoError(f'structures: {exception}') from None
            made += progress.new_structures
            if progress.done < generation.target:
                self.report(f'  warning: {generation.summary(progress)}')

        everything = get_or_create_group(STRUCTURES_GROUP)
        for subset in ALL_SUBSETS:
            everything.add_nodes(list(orm.load_group(label=subset_group_label(subset)).nodes))
        self.result.structures = everything.count()
        return (
            f'{self.result.structures} structures of {len(ALL_SUBSETS)} subsets in {STRUCTURES_GROUP} '
            f'({new_seeds} seeds and {made} generated structures stored now)'
        )

    @property
    def controller(self):
        """The submission controller of the demo's structures (its process group created if needed)."""
        from aiida_mad.controllers.dft import DftSubmissionController
        from aiida_mad.storage import get_or_create_group

        if self._controller is None:
            for label in (STRUCTURES_GROUP, DFT_GROUP):
                get_or_create_group(label)
            self._controller = DftSubmissionController(
                parent_group_label=STRUCTURES_GROUP,
                group_label=DFT_GROUP,
                code=self.code.full_label,
                protocol=PROTOCOL,
                overrides=self.overrides,
                options=self.options,
                max_concurrent=self.max_concurrent,
            )
        return self._controller

    def _labelling_counts(self) -> dict[str, int]:
        status = self.controller.status()
        return {state: sum(entry.counts[state] for entry in status.values()) for state in status_states()}

    def stage_labelling(self) -> str:
        """Label every structure with the :data:`PROTOCOL` through the controller, at most the cores at once."""
        controller = self.controller
        try:
            controller.validate_pending()
        except ValueError as exception:
            raise DemoError(f'labelling: {exception}') from None
        pending = len(controller.pending_uuids())
        self.report(
            f'  {pending} of {len(controller.get_all_extras_to_submit())} structures to label, '
            f'{self.max_concurrent} pw.x at once with {self.ranks} MPI rank(s) each, fingerprint '
            f'{controller.fingerprint[:16]}'
        )

        def active():
            controller.submit_new_batch()
            return [node for node in controller.group.nodes if isinstance(node, orm.ProcessNode)]

        def line():
            counts = self._labelling_counts()
            return ', '.join(f'{count} {state}' for state, count in counts.items())

        self._wait('labelling', active, line)
        counts = self._labelling_counts()
        self.result.labelled = counts['finished'] + counts['outlier']
        self.result.failed = [
            node.pk for node in controller.group.nodes if isinstance(node, orm.ProcessNode) and not node.is_finished_ok
        ]
        failed = f', failed: {", ".join(map(str, self.result.failed))}' if self.result.failed else ''
        return f'{self.result.labelled} labelled, {pending} submitted now, in {DFT_GROUP}{failed}'

    def stage_isolated_atoms(self) -> str:
        """Compute the isolated atoms of the elements present that have no energy at this fingerprint yet."""
        from aiida_mad.controllers.broker import submit  # aiida's, connected anew after a daemon restart
        from aiida_mad.workflows.dataset import find_atomic_energies
        from aiida_mad.workflows.isolated_atoms import IsolatedAtomsWorkChain

        fingerprint = self.controller.fingerprint
        elements = sorted(
            {symbol for node in orm.load_group(label=STRUCTURES_GROUP).nodes for symbol in node.get_symbols_set()}
        )

        def submitted():
            return self._work_chains(process_type('mad.dft.isolated_atoms'), ISOLATED_ATOMS_EXTRA, fingerprint)

        def line():
            energies = find_atomic_energies(fingerprint)[1]
            running = [node for node in submitted() if not node.is_terminated]
            busy = sorted({element for node in running for element in node.inputs.elements.get_list()})
            return f'{len([e for e in elements if e in energies])} of {len(elements)} elements done' + (
                f', running: {" ".join(busy)}' if busy else ''
            )

        # Runs of an interrupted demo finish first; an element that failed before is reported, not tried again.
        self._wait('isolated atoms', submitted, line)
        tried = {element for node in submitted() for element in node.inputs.elements.get_list()}
        energies = find_atomic_energies(fingerprint)[1]
        missing = [element for element in elements if element not in energies and element not in tried]
        chunks = [missing[index : index + self.max_concurrent] for index in range(0, len(missing), self.max_concurrent)]
        for chunk in chunks:
            try:
                builder = IsolatedAtomsWorkChain.get_builder_from_protocol(
                    self.code, chunk, PROTOCOL, self.overrides, options=self.options
                )
            except ValueError as exception:
                raise DemoError(f'isolated atoms: {exception}') from None
            node = submit(builder)
            node.base.extras.set(ISOLATED_ATOMS_EXTRA, fingerprint)
            self._wait('isolated atoms', submitted, line)
        energies = find_atomic_energies(fingerprint)[1]
        self.result.atomic_energies = {element: energies[element] for element in elements if element in energies}
        self.result.failed_elements = [element for element in elements if element not in energies]
        failed = f'; failed: {", ".join(self.result.failed_elements)}' if self.result.failed_elements else ''
        return f'{len(self.result.atomic_energies)} of {len(elements)} elements, {len(missing)} computed now{failed}'

    def stage_dataset(self) -> str:
        """Build the dataset :data:`DATASET_NAME` from the demo's DFT group, unless it exists."""
        from aiida.engine import run_get_node

        from aiida_mad.workflows.dataset import (
            DatasetSelectionError,
            DatasetWorkChain,
            existing_dataset_names,
            load_dataset,
            select_results,
        )

        fingerprint = self.controller.fingerprint
        if DATASET_NAME in existing_dataset_names():
            dataset = self.result.dataset = load_dataset(DATASET_NAME)
            if dataset.fingerprint != fingerprint:
                raise DemoError(
                    f'dataset: {DATASET_NAME}<{dataset.pk}> exists at another level of theory (fingerprint '
                    f'{dataset.fingerprint[:16]}, not {fingerprint[:16]}): run the demo with the family it was made '
                    'with, or in another profile'
                )
            return f'dataset {DATASET_NAME}<{dataset.pk}> already there'
        baseline = not self.result.failed_elements
        if not baseline:
            self.report(f'  warning: no isolated-atom energy for {", ".join(self.result.failed_elements)}: no baseline')
        try:
            selection = select_results([DFT_GROUP], fingerprint=fingerprint, baseline=baseline)
        except DatasetSelectionError as exception:
            raise DemoError(f'dataset: {exception}') from None
        builder = DatasetWorkChain.get_builder()
        builder.name = orm.Str(DATASET_NAME)
        builder.groups = orm.List([DFT_GROUP])
        builder.seed = orm.Int(choose_seed([result.source_uuid for result in selection.used]))
        builder.fractions = orm.List(list(FRACTIONS))
        builder.fingerprint = orm.Str(selection.fingerprint)
        builder.baseline = orm.Bool(baseline)
        _, node = run_get_node(builder)
        if not node.is_finished_ok:
            raise DemoError(f'dataset: {node.process_label}<{node.pk}> failed: {node.exit_status} {node.exit_message}')
        dataset = self.result.dataset = node.outputs.dataset
        return f'dataset {dataset.name}<{dataset.pk}>: {dataset.n_frames} frames, {len(dataset.counts)} subsets'

    def stage_export(self) -> str:
        """Write the ``xyz`` exports and the record folder (with the HTML report), unless already written."""
        from aiida_mad.export.dataset import ExportError, export_dataset, write_dataset_record
        from aiida_mad.export.folders import read_marker
        from aiida_mad.workflows.dataset import load_dataset

        dataset = self.result.dataset or load_dataset(DATASET_NAME)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.result.export_dir = self.output_dir / 'export'
        self.result.record_dir = self.output_dir / 'record'
        written = []
        try:
            if read_marker(self.result.export_dir) is None:
                export_dataset(dataset, self.result.export_dir)
                written.append('export')
            if read_marker(self.result.record_dir) is None:
                write_dataset_record(
                    dataset, self.result.record_dir, metadata=record_metadata(dataset), allow_test_grade=True
                )
                written.append('record')
        except (ExportError, OSError) as exception:
            raise DemoError(f'export: {exception}') from None
        done = f'wrote {" and ".join(written)}' if written else 'export and record already there'
        return f'{done} in {self.output_dir}'

    def stage_training(self) -> str:
        """Train a tiny PET model on the dataset through ``TrainWorkChain``, unless one was trained already."""
        from aiida_mad.workflows.dataset import load_dataset
        from aiida_mad.workflows.train import TrainWorkChain

        dataset = self.result.dataset or load_dataset(DATASET_NAME)
        node, _ = self._run_once(
            'training',
            TrainWorkChain,
            TRAINING_EXTRA,
            dataset.uuid,
            lambda: TrainWorkChain.get_builder_from_protocol(
                self.train_code, dataset, TRAINING_PROTOCOL, name=DATASET_NAME
            ),
        )
        self.result.training = node
        return f'TrainWorkChain<{node.pk}> finished: model {node.outputs.model.pk}'

    def stage_evaluate(self) -> str:
        """Evaluate the demo's model on the dataset's test split (``mad.evaluate``), unless evaluated already."""
        from aiida_mad.workflows.dataset import load_dataset
        from aiida_mad.workflows.evaluate import EvaluateWorkChain, evaluation_tables
        from aiida_mad.workflows.train import TrainWorkChain

        dataset = self.result.dataset or load_dataset(DATASET_NAME)
        training = self.result.training
        if training is None:
            trainings = self._work_chains(TrainWorkChain.build_process_type(), TRAINING_EXTRA, dataset.uuid)
            finished = [node for node in trainings if node.is_finished_ok]
            if not finished:
                raise DemoError('evaluate: no finished training of the demo dataset: run the training stage first')
            training = max(finished, key=lambda node: node.ctime)
        model = training.outputs.model
        tables = evaluation_tables(dataset=dataset, model=model)
        if tables:
            return f'model {model.pk} already evaluated: {_evaluation_summary(tables[0])}'

        def builder():
            code = predict_code(self.train_code.computer)
            split = 'test' if any(counts.get('test', 0) for counts in dataset.counts.values()) else 'all'
            return EvaluateWorkChain.get_builder_for(model, code=code, dataset=dataset, split=split)

        node, _ = self._run_once('evaluate', EvaluateWorkChain, EVALUATION_EXTRA, model.uuid, builder)
        return f'EvaluateWorkChain<{node.pk}>: {_evaluation_summary(node.outputs.table)}'

    def stage_active_learning(self) -> str:
        """Run one tiny active-learning iteration on the dataset (:data:`ACTIVE_LEARNING`), unless one finished."""
        from aiida_mad.workflows.active_learning import ActiveLearningWorkChain
        from aiida_mad.workflows.dataset import load_dataset

        dataset = self.result.dataset or load_dataset(DATASET_NAME)
        computer = self.train_code.computer
        mace = mace_code(computer)
        if mace is None:
            return (
                f'skipped: no mace_run_train code (plugin mad.mace) on computer {computer.label}: make it with '
                f'`aiida-mad setup {computer.label}`'
            )

        def builder():
            settings = {key: value for key, value in ACTIVE_LEARNING.items() if key != 'max_iterations'}
            made = ActiveLearningWorkChain.get_builder_from_protocol(
                dataset,
                mace_code=mace,
                predict_code=predict_code(computer),
                pw_code=self.code,
                dft_protocol=PROTOCOL,
                max_iterations=ACTIVE_LEARNING['max_iterations'],
                max_concurrent=self.max_concurrent,
                dft_options=self.options,
                **settings,
            )
            made.dft.pseudo_family = orm.Str(self.pseudo_family)
            made.final_retrain = orm.Bool(False)
            return made

        node, finished = self._run_once(
            'active-learning', ActiveLearningWorkChain, ACTIVE_LEARNING_EXTRA, dataset.uuid, builder
        )
        (entry,) = node.outputs.record.get_dict()['iterations']
        done = 'finished' if finished else 'finished now'
        return (
            f'ActiveLearningWorkChain<{node.pk}> {done}: {entry["candidates"]} candidates, {entry["selected"]} '
            f'selected, {entry["downsampled"]} downsampled, {entry["labelled"]} labelled, {entry["failed"]} failed; '
            f'dataset {node.outputs.dataset.name}<{node.outputs.dataset.pk}>'
        )


#: One line per stage, printed when it starts.
STAGE_DESCRIPTIONS = {
    'structures': 'bundled seeds and a few tiny structures of every subset',
    'labelling': f'pw.x ({PROTOCOL} protocol) through the daemon and the submission controller',
    'isolated-atoms': 'reference energies of the elements present',
    'dataset': f'the dataset {DATASET_NAME}',
    'export': 'extended XYZ, AiiDA archives, chemiscope files, the record folder and its HTML report',
    'training': f'a tiny PET model (protocol {TRAINING_PROTOCOL})',
    'evaluate': 'errors of the model per subset and its rotational symmetry error (mad.evaluate)',
    'active-learning': (
        f'one iteration of active learning: {ACTIVE_LEARNING["members"]} tiny MACE models, '
        f'{ACTIVE_LEARNING["pool"]["count"]} candidates, at most 2 labelled'
    ),
}


def subset_group_label(subset: str) -> str:
    """Return the demo's group of the structures of ``subset``."""
    if subset not in ALL_SUBSETS:
        raise ValueError(f'unknown subset {subset!r}')
    return f'{STRUCTURES_GROUP}/{subset}'


def choose_seed(uuids: list[str]) -> int:
    """Return the first dataset seed whose train split holds every element and a periodic frame, as does validation.

    Training needs frames in both, and periodic frames give it a stress; with a dozen frames a seed can leave a split
    empty. The model must know every element of the frames it is evaluated on (the evaluate stage refuses a test
    frame with an element the training split lacked). Without such a seed, the first with periodic frames in both
    splits (else 0). The seed is a pure function of the structures, so the same structures always give the same
    dataset.
    """
    from aiida_mad.dataset.splits import assign_split

    symbols = {uuid: orm.load_node(uuid).get_symbols_set() for uuid in uuids}
    periodic = [uuid for uuid in uuids if all(orm.load_node(uuid).pbc)]
    elements = set().union(*symbols.values())
    fallback = None
    for seed in range(MAX_SEEDS):
        splits = {uuid: assign_split(uuid, seed, FRACTIONS) for uuid in uuids}
        if not {'train', 'val'} <= {splits[uuid] for uuid in periodic}:
            continue
        if set().union(*(symbols[uuid] for uuid in uuids if splits[uuid] == 'train')) >= elements:
            return seed
        fallback = seed if fallback is None else fallback
    return fallback or 0


def status_states() -> tuple[str, ...]:
    """Return the states the submission controller counts."""
    from aiida_mad.controllers.dft import STATES

    return STATES


def record_metadata(dataset) -> dict:
    """Return the record metadata of the demo's dataset: the profile's user as author."""
    user = orm.User.collection.get_default()
    name = ' '.join(part for part in (user.first_name, user.last_name) if part) if user is not None else ''
    description = (
        f'The aiida-mad demo: {dataset.n_frames} tiny structures of {len(dataset.counts)} subsets labelled with the '
        f'`{PROTOCOL}` protocol (fingerprint {dataset.fingerprint}). Test grade (the offline pseudopotentials, not '
        'the MAD level of theory): not for publication.'
    )
    return {
        **RECORD_METADATA,
        'description': description,
        'authors': [{'name': name or 'aiida-mad demo', 'affiliations': ['aiida-mad demo']}],
    }


def _evaluation_summary(table: orm.Dict) -> str:
    """Return one line of an evaluation table: frames, energy and force MAE, rotational error, the table's pk."""
    overall = table['overall']

    def shown(key: str, unit: str, digits: int = 1) -> str:
        return '—' if overall.get(key) is None else f'{overall[key]:.{digits}f} {unit}'

    return (
        f'{overall["n_frames"]} frames ({table["split"]}), energy MAE {shown("energy_mae", "meV/atom")}, forces MAE '
        f'{shown("forces_mae", "meV/Å")}, rotational std {shown("rotation_std", "meV/atom", 3)} (table {table.pk})'
    )


def mace_code(computer: orm.Computer) -> orm.AbstractCode | None:
    """Return the ``mace_run_train`` code of ``computer`` (plugin ``mad.mace``, see ``aiida-mad setup``) or None."""
    query = orm.QueryBuilder().append(orm.Computer, filters={'id': computer.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'attributes.input_plugin': 'mad.mace'})
    codes = sorted(query.all(flat=True), key=lambda code: (code.label != 'mace', code.pk))
    return codes[0] if codes else None


def predict_code(computer: orm.Computer) -> orm.AbstractCode:
    """Return the ``aiida-mad-predict`` code of ``computer`` (plugin ``mad.predict``; ``aiida-mad setup`` makes it).

    :raises DemoError: if the computer has none.
    """
    query = orm.QueryBuilder().append(orm.Computer, filters={'id': computer.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'attributes.input_plugin': 'mad.predict'})
    codes = sorted(query.all(flat=True), key=lambda code: (code.label != 'aiida-mad-predict', code.pk))
    if not codes:
        raise DemoError(
            f'evaluate: no aiida-mad-predict code on computer {computer.label}: make it with '
            f'`aiida-mad setup {computer.label}`'
        )
    return codes[0]
