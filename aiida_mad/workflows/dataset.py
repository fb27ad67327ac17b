"""``DatasetWorkChain`` (``mad.dataset``): a dataset from the finished DFT results of groups, at one level of theory.

The selection (:func:`select_results`) is a set of queries, shared by the work chain and the CLI (which runs it first
so that a refused selection stores nothing):

* the results are the ``MadDftWorkChain`` nodes in the groups, plus those that labelled a structure in the groups;
* they must share one level-of-theory fingerprint: a mix is refused, listing the fingerprints found, unless one
  is chosen explicitly (the others are then reported as excluded);
* one frame per labelled structure: a structure labelled twice at the same fingerprint gives its earliest
  finished result (the others are reported as duplicates);
* results that did not finish, failed (by exit status) or are outliers (max |F| above the subset's threshold,
  the thresholds of the ``mad`` protocol unless overridden) are excluded and counted per subset;
* the baseline is the isolated-atom table of the same fingerprint (``IsolatedAtomsWorkChain``); every element of
  the dataset must be in it, unless the dataset is built without one.

The frames are built by the :func:`~aiida_mad.calculations.dataset.build_dataset` calcfunction, whose inputs are
the structure, energy, forces, stress (and DOS) of every frame and the baseline tables, so the dataset is linked
by provenance to every result it holds. The split of a frame depends only on its structure's uuid and the seed.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

from aiida import orm
from aiida.common.exceptions import MultipleObjectsError, NotExistent
from aiida.engine import WorkChain

from aiida_mad.calculations.bulk import query_rows, run_bulk_linked
from aiida_mad.calculations.dataset import BulkLinkBuildDataset
from aiida_mad.constants import (
    DEFAULT_FRACTIONS,
    FRAMES_PER_SHARD,
    QUERY_CHUNK_SIZE,
    dataset_group_label,
    process_type,
)
from aiida_mad.data.dataset import DatasetData
from aiida_mad.dataset.splits import validate_fractions
from aiida_mad.workflows.dft import MadDftWorkChain, result_theory_summary

__all__ = (
    'DatasetSelectionError',
    'DatasetWorkChain',
    'Selection',
    'default_outlier_thresholds',
    'find_atomic_energies',
    'select_results',
)

#: Process types of the work chains whose results a dataset is made of.
DFT_PROCESS_TYPE = process_type('mad.dft')
ISOLATED_ATOMS_PROCESS_TYPE = process_type('mad.dft.isolated_atoms')

#: Outputs of ``MadDftWorkChain`` a frame is made of (and the namespaces of ``build_dataset`` they go to).
FRAME_OUTPUTS = {'structure': 'structures', 'energy': 'energies', 'forces': 'forces', 'stress': 'stresses'}
DOS_OUTPUT = ('dos', 'dos')

#: What a frame can be excluded for, in report order.
EXCLUSIONS = ('outlier', 'failed', 'not_finished', 'other_fingerprint', 'duplicate')

_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$')


class DatasetSelectionError(ValueError):
    """The selection cannot give a dataset; ``exit_code`` names the work chain's exit code for it."""

    def __init__(self, message: str, exit_code: str):
        super().__init__(message)
        self.exit_code = exit_code


def default_outlier_thresholds() -> dict[str, float]:
    """Return the outlier thresholds (max |F| in eV/Å, ``default`` plus per subset) of the ``mad`` protocol."""
    return dict(MadDftWorkChain.get_protocol_inputs('mad')['outlier_max_force'])


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a dataset (used in group labels and file names), else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f'invalid dataset name {name!r}: use 1-100 letters, digits, dots, dashes or underscores, '
            'starting with a letter or digit'
        )
    return name


def load_dataset(identifier):
    """Return the ``mad.dataset`` node named ``identifier``, or with that pk or uuid; else raise ``ValueError``."""
    if isinstance(identifier, DatasetData):
        return identifier
    query = orm.QueryBuilder()
    query.append(orm.Group, filters={'label': dataset_group_label(str(identifier))}, tag='group')
    query.append(DatasetData, with_group='group')
    found = query.all(flat=True)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ValueError(f'group {dataset_group_label(identifier)} holds {len(found)} datasets: name one by pk')
    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError):
        node = None
    if isinstance(node, DatasetData):
        return node
    known = existing_dataset_names()
    hint = f'known datasets: {", ".join(known)}' if known else 'there is no dataset in this profile yet'
    raise ValueError(f'unknown dataset {identifier!r} ({hint})')


def existing_dataset_names() -> list[str]:
    """Return the names of the datasets of the profile, sorted."""
    query = orm.QueryBuilder()
    query.append(DatasetData, project='attributes.name')
    return sorted(set(query.all(flat=True)))


# ----------------------------------------------------------------------------------------------------------------
# Selection


@dataclasses.dataclass(slots=True)
class Result:
    """One ``MadDftWorkChain`` found in the groups, with what the selection needs to know of it."""

    pk: int
    uuid: str
    ctime: object
    process_state: str | None
    exit_status: int | None
    fingerprint: str | None = None
    source_uuid: str | None = None
    subset: str | None = None
    max_force: float | None = None
    elements: tuple[str, ...] = ()
    outputs: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def finished_ok(self) -> bool:
        """Return whether the work chain finished with exit status 0 and has its outputs."""
        return self.process_state == 'finished' and self.exit_status == 0 and 'properties' in self.outputs

    @property
    def terminated(self) -> bool:
        """Return whether the work chain will not change any more."""
        return self.process_state in ('finished', 'excepted', 'killed')


@dataclasses.dataclass
class Selection:
    """The results a dataset is built from, and what was left out and why."""

    fingerprint: str
    used: list[Result]
    record: dict[str, dict]
    thresholds: dict[str, float]
    groups: list[str]
    atomic_energies: list[orm.Dict] = dataclasses.field(default_factory=list)
    theory: dict = dataclasses.field(default_factory=dict)

    @property
    def elements(self) -> list[str]:
        """Return the elements of the used results, sorted."""
        return sorted({element for result in self.used for element in result.elements})

    def as_dict(self) -> dict:
        """Return the JSON-ready record stored on the dataset."""
        return {
            'groups': self.groups,
            'fingerprint': self.fingerprint,
            'outlier_max_force': self.thresholds,
            'subsets': self.record,
            'atomic_energies': [node.uuid for node in self.atomic_energies],
            'theory': self.theory,
        }

    def describe(self) -> list[str]:
        """Return one line per subset: frames used, and how many results were excluded and why."""
        return describe_record(self.record, self.thresholds)


def describe_record(record: Mapping[str, Mapping], thresholds: Mapping[str, float]) -> list[str]:
    """Return the lines of :meth:`Selection.describe` for a stored selection record."""
    lines = []
    for subset, counts in record.items():
        excluded = []
        for reason in EXCLUSIONS:
            count = counts.get(reason, 0)
            if not count:
                continue
            if reason == 'outlier':
                threshold = thresholds.get(subset, thresholds.get('default'))
                excluded.append(f'{count} outlier{"s" * (count != 1)} (max |F| > {threshold:g} eV/Å)')
            elif reason == 'failed':
                statuses = ', '.join(f'{status}: {n}' for status, n in sorted(counts.get('exit_statuses', {}).items()))
                excluded.append(f'{count} failed (exit status {statuses})')
            else:
                excluded.append(f'{count} {reason.replace("_", " ")}')
        tail = f'; excluded {", ".join(excluded)}' if excluded else ''
        used = counts.get('used', 0)
        lines.append(f'{subset}: {used} frame{"s" * (used != 1)}{tail}')
    return lines


def _load_groups(labels: Sequence[str]) -> list[orm.Group]:
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise DatasetSelectionError('no group given: name at least one group of DFT results', 'ERROR_UNKNOWN_GROUP')
    query = orm.QueryBuilder().append(orm.Group, filters={'label': {'in': labels}}, project=['label', '*'])
    found = dict(query.all())
    unknown = [label for label in labels if label not in found]
    if unknown:
        raise DatasetSelectionError(f'unknown group(s): {", ".join(unknown)}', 'ERROR_UNKNOWN_GROUP')
    return [found[label] for label in labels]


def _workchain_queries(labels: Sequence[str]) -> Iterable[orm.QueryBuilder]:
    """Yield queries whose ``w`` tag is every ``MadDftWorkChain`` in the groups or run on a structure in them."""
    direct = orm.QueryBuilder()
    direct.append(orm.Group, filters={'label': {'in': list(labels)}}, tag='g')
    direct.append(orm.WorkflowNode, with_group='g', filters={'process_type': DFT_PROCESS_TYPE}, tag='w')
    yield direct
    via_structure = orm.QueryBuilder()
    via_structure.append(orm.Group, filters={'label': {'in': list(labels)}}, tag='g')
    via_structure.append(orm.StructureData, with_group='g', tag='s')
    via_structure.append(
        orm.WorkflowNode,
        with_incoming='s',
        edge_filters={'label': 'structure'},
        filters={'process_type': DFT_PROCESS_TYPE},
        tag='w',
    )
    yield via_structure


def _joined(labels, cls, relation: str, edge_label, projections, edge_project=None) -> Iterable[tuple]:
    """Yield ``(work chain pk, *projections, *edge projections)`` rows: each work chain and its neighbour ``cls``."""
    for query in _workchain_queries(labels):
        query.add_projection('w', 'id')
        query.append(
            cls,
            tag='x',
            edge_filters={'label': edge_label},
            project=projections,
            edge_project=edge_project,
            **{relation: 'w'},
        )
        yield from query_rows(query, batch_size=QUERY_CHUNK_SIZE)


def _collect_results(labels: Sequence[str]) -> dict[int, Result]:
    """Return every DFT work chain of the groups with its state, fingerprint, source, subset and outputs.

    Five queries per way of finding the work chains (group members, runs on structures in the groups), whatever the
    number of results; the rows are read as plain values (:func:`~aiida_mad.calculations.bulk.query_rows`).
    """
    results: dict[int, Result] = {}
    projections = ['id', 'uuid', 'ctime', 'attributes.process_state', 'attributes.exit_status']
    for query in _workchain_queries(labels):
        query.add_projection('w', [*projections, 'extras.mad_fingerprint'])
        for pk, uuid, ctime, state, exit_status, fingerprint in query_rows(query, batch_size=QUERY_CHUNK_SIZE):
            if pk not in results:
                results[pk] = Result(pk, uuid, ctime, state, exit_status, fingerprint=fingerprint)
    if not results:
        return results

    # Rows come as (work chain pk, projections, edge projections): the vertices' in path order, then the edge's.
    # The labelled structure (input `structure`): it drives the split and carries the subset of imported data.
    for pk, uuid, subset in _joined(
        labels, orm.StructureData, 'with_outgoing', 'structure', ['uuid', 'extras.mad_subset']
    ):
        result = results[pk]
        result.source_uuid = uuid
        result.subset = result.subset or subset

    # Outputs of the finished ones; `properties` holds the authoritative fingerprint, subset and max |F|, the output
    # `structure` the elements. (Each projected attribute is decoded from JSON: project them only where they are.)
    wanted = [*FRAME_OUTPUTS, DOS_OUTPUT[0], 'properties']
    for pk, output, label in _joined(labels, orm.Data, 'with_incoming', {'in': wanted}, ['id'], edge_project='label'):
        results[pk].outputs[label] = output
    properties = ['attributes.fingerprint', 'attributes.subset', 'attributes.max_force']
    for pk, fingerprint, subset, max_force in _joined(labels, orm.Dict, 'with_incoming', 'properties', properties):
        result = results[pk]
        result.fingerprint = fingerprint or result.fingerprint
        result.subset = subset or result.subset
        result.max_force = max_force
    for pk, kinds in _joined(labels, orm.StructureData, 'with_incoming', 'structure', ['attributes.kinds']):
        results[pk].elements = tuple(sorted({symbol for kind in kinds or [] for symbol in kind['symbols']}))
    return results


def _choose_fingerprint(results: Iterable[Result], fingerprint: str | None) -> str:
    found = collections.Counter(result.fingerprint for result in results if result.fingerprint)
    if fingerprint:
        matches = [value for value in found if value.startswith(fingerprint)]
        if len(matches) != 1:
            listed = ', '.join(f'{value} ({count} results)' for value, count in found.most_common())
            raise DatasetSelectionError(
                f'fingerprint {fingerprint!r} matches {len(matches)} of the fingerprints found: {listed}',
                'ERROR_MIXED_FINGERPRINTS',
            )
        return matches[0]
    if not found:
        raise DatasetSelectionError('no result carries a level-of-theory fingerprint', 'ERROR_EMPTY_SELECTION')
    if len(found) > 1:
        listed = '; '.join(f'{value} ({count} results)' for value, count in found.most_common())
        raise DatasetSelectionError(
            f'the results mix {len(found)} levels of theory, and a dataset holds one: {listed}. '
            'Choose one with --fingerprint, or select other groups.',
            'ERROR_MIXED_FINGERPRINTS',
        )
    return next(iter(found))


def _threshold(thresholds: Mapping[str, float], subset: str) -> float:
    return float(thresholds.get(subset, thresholds['default']))


def select_results(
    groups: Sequence[str],
    *,
    fingerprint: str | None = None,
    outlier_max_force: Mapping[str, float] | None = None,
    baseline: bool = True,
    include_dos: bool = False,
) -> Selection:
    """Select the DFT results of ``groups`` a dataset is built from; raise :class:`DatasetSelectionError` if none can.

    :param groups: labels of groups holding ``MadDftWorkChain`` nodes or the structures they labelled.
    :param fingerprint: the level of theory to take (a prefix of at least 8 characters is enough); needed only
        when the groups mix several.
    :param outlier_max_force: thresholds in eV/Å by subset, over those of the ``mad`` protocol (key ``default``
        for the others).
    :param baseline: require the isolated-atom energies of the same fingerprint for every element.
    :param include_dos: require the DOS of every frame (``mad-dos`` results).
    """
    labels = [group.label for group in _load_groups(groups)]
    thresholds = {**default_outlier_thresholds(), **(outlier_max_force or {})}
    bad = {key: value for key, value in thresholds.items() if not isinstance(value, int | float) or value <= 0}
    if bad:
        raise DatasetSelectionError(f'outlier thresholds must be positive numbers (eV/Å): {bad}', 'ERROR_INVALID_INPUT')
    if fingerprint is not None and len(fingerprint) < 8:
        raise DatasetSelectionError(f'fingerprint {fingerprint!r}: give at least 8 characters', 'ERROR_INVALID_INPUT')
    results = _collect_results(labels)
    if not results:
        raise DatasetSelectionError(
            f'the groups {", ".join(labels)} hold no MadDftWorkChain and no structure labelled by one',
            'ERROR_EMPTY_SELECTION',
        )
    chosen = _choose_fingerprint(results.values(), fingerprint)

    no_subset = [result for result in results.values() if not result.subset]
    if no_subset:
        shown = ', '.join(f'MadDftWorkChain<{result.pk}>' for result in no_subset[:10])
        raise DatasetSelectionError(
            f'{len(no_subset)} results have no subset (e.g. {shown}): set the `mad_subset` extra of their structures',
            'ERROR_MISSING_SUBSET',
        )

    record: dict[str, dict] = {}
    by_source: dict[str, list[Result]] = collections.defaultdict(list)
    for result in results.values():
        counts = record.get(result.subset)
        if counts is None:
            counts = record[result.subset] = {'used': 0, **dict.fromkeys(EXCLUSIONS, 0), 'exit_statuses': {}}
        if result.fingerprint != chosen:
            counts['other_fingerprint'] += 1
        else:
            by_source[result.source_uuid].append(result)

    used: list[Result] = []
    for source_uuid in sorted(by_source):
        candidates = sorted(by_source[source_uuid], key=lambda result: (result.ctime, result.uuid))
        finished = [result for result in candidates if result.finished_ok]
        if finished:
            best = finished[0]
            counts = record[best.subset]
            counts['duplicate'] += len(finished) - 1
            if best.max_force is not None and best.max_force > _threshold(thresholds, best.subset):
                counts['outlier'] += 1
                continue
            if include_dos and DOS_OUTPUT[0] not in best.outputs:
                raise DatasetSelectionError(
                    f'MadDftWorkChain<{best.pk}> has no DOS output: build without --with-dos', 'ERROR_MISSING_DOS'
                )
            counts['used'] += 1
            used.append(best)
            continue
        latest = candidates[-1]
        counts = record[latest.subset]
        if latest.terminated:
            counts['failed'] += 1
            status = str(latest.exit_status if latest.process_state == 'finished' else latest.process_state)
            counts['exit_statuses'][status] = counts['exit_statuses'].get(status, 0) + 1
        else:
            counts['not_finished'] += 1

    record = {subset: record[subset] for subset in sorted(record)}
    if not used:
        lines = '; '.join(describe_record(record, thresholds))
        raise DatasetSelectionError(
            f'no result of fingerprint {chosen[:16]} can enter the dataset ({lines})', 'ERROR_EMPTY_SELECTION'
        )
    selection = Selection(
        chosen, used, record, thresholds, labels, theory=result_theory_summary(orm.load_node(used[0].pk))
    )
    if baseline:
        tables, energies = find_atomic_energies(chosen)
        missing = sorted(set(selection.elements) - set(energies))
        if missing:
            raise DatasetSelectionError(
                missing_baseline_message(chosen, missing, selection.theory, used[0].pk), 'ERROR_MISSING_BASELINE'
            )
        selection.atomic_energies = tables
    return selection


def failed_isolated_atoms(fingerprint: str, elements: Iterable[str]) -> dict[str, int]:
    """Return ``{element: pk}`` of the isolated-atom runs of ``fingerprint`` whose latest one did not finish."""
    wanted = {f'isolated atom {element}': element for element in elements}
    query = orm.QueryBuilder().append(
        orm.WorkflowNode,
        filters={
            'process_type': DFT_PROCESS_TYPE,
            'extras.mad_fingerprint': fingerprint,
            'label': {'in': sorted(wanted)},
        },
        project=['id', 'label', 'attributes.exit_status', 'attributes.process_state'],
    )
    found: dict[str, int] = {}
    for pk, label, exit_status, state in sorted(query.all()):
        if state in ('finished', 'excepted', 'killed'):
            if state == 'finished' and exit_status == 0:
                found.pop(wanted[label], None)
            else:
                found[wanted[label]] = pk
    return found


def missing_baseline_message(fingerprint: str, missing: Sequence[str], theory: Mapping, result_pk: int) -> str:
    """Return what a missing baseline lacks, what failed, and the command that computes it."""
    message = f'no isolated-atom energy at fingerprint {fingerprint[:16]} for {", ".join(missing)}'
    failed = failed_isolated_atoms(fingerprint, missing)
    if failed:
        listed = ', '.join(f'{element} (MadDftWorkChain<{pk}> failed)' for element, pk in sorted(failed.items()))
        message += f'; computed but failed: {listed}'
    code = orm.load_node(result_pk).base.links.get_incoming(link_label_filter='scf__pw__code').all_nodes()
    family = theory.get('level_of_theory', {}).get('pseudopotentials', {}).get('family')
    command = f'aiida-mad dft isolated-atoms {" ".join(missing)}'
    if theory.get('protocol'):
        command += f' --protocol {theory["protocol"].split("/")[0]}'
    if family:
        command += f' -F {family}'
    if code:
        command += f' --code {code[0].full_label}'
    advice = f'run `{command} --wait` (the protocol, family and code of the data)'
    if not theory.get('protocol'):
        advice += ' with the protocol and overrides the data were computed with (they match no protocol)'
    return f'{message}: {advice}, or build with --no-baseline'


def find_atomic_energies(fingerprint: str) -> tuple[list[orm.Dict], dict[str, float]]:
    """Return the isolated-atom tables of ``fingerprint`` (oldest first) and their merged energies (newest wins)."""
    query = orm.QueryBuilder()
    query.append(orm.WorkflowNode, filters={'process_type': ISOLATED_ATOMS_PROCESS_TYPE}, tag='w', project='ctime')
    query.append(
        orm.Str, with_incoming='w', edge_filters={'label': 'fingerprint'}, filters={'attributes.value': fingerprint}
    )
    query.append(orm.Dict, with_incoming='w', edge_filters={'label': 'energies'}, project='*')
    tables = [table for _, table in sorted(query.all(), key=lambda row: row[0])]
    energies: dict[str, float] = {}
    for table in tables:
        energies.update(table.get_dict())
    return tables, energies


def build_inputs(selection: Selection, *, name: str, seed: int, fractions, frames_per_shard: int, dos: bool) -> dict:
    """Return the inputs of :func:`~aiida_mad.calculations.dataset.build_dataset` for a selection.

    The per-frame namespaces (``structures``, ``energies``, ``forces``, ``stresses``, ``dos``) come as pks under
    ``linked`` (for :func:`~aiida_mad.calculations.bulk.run_bulk_linked`: linked in bulk, never loaded).
    """
    outputs = dict(FRAME_OUTPUTS)
    if dos:
        outputs[DOS_OUTPUT[0]] = DOS_OUTPUT[1]
    linked: dict[str, dict[str, int]] = {namespace: {} for namespace in outputs.values()}
    frames = {}
    for index, result in enumerate(selection.used):
        label = f'f{index:07d}'
        frames[label] = {'source_uuid': result.source_uuid, 'dft_uuid': result.uuid, 'subset': result.subset}
        for output, namespace in outputs.items():
            if output in result.outputs:
                linked[namespace][label] = result.outputs[output]
    parameters = {
        'name': name,
        'seed': seed,
        'fractions': list(fractions),
        'fingerprint': selection.fingerprint,
        'frames_per_shard': frames_per_shard,
        'selection': selection.as_dict(),
        'frames': frames,
    }
    inputs = {'parameters': orm.Dict(parameters), 'linked': {key: value for key, value in linked.items() if value}}
    if selection.atomic_energies:
        inputs['baselines'] = {f't{index:03d}': table for index, table in enumerate(selection.atomic_energies)}
    return inputs


# ----------------------------------------------------------------------------------------------------------------
# Work chain


class DatasetWorkChain(WorkChain):
    """Select the DFT results of groups, filter them and store them as a split ``mad.dataset`` node."""

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('name', valid_type=orm.Str, help='Dataset name; the dataset goes to group mad/datasets/<name>.')
        spec.input('groups', valid_type=orm.List, help='Labels of the groups of DFT results (or of their structures).')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of the splits.')
        spec.input(
            'fractions',
            valid_type=orm.List,
            default=lambda: orm.List(list(DEFAULT_FRACTIONS)),
            help='Train, validation and test fractions (per subset).',
        )
        spec.input('fingerprint', valid_type=orm.Str, required=False, help='Level of theory to take from a mix.')
        spec.input(
            'outlier_max_force',
            valid_type=orm.Dict,
            required=False,
            help='Outlier thresholds in eV/Å by subset (key `default` for the others), over those of the protocol.',
        )
        spec.input('baseline', valid_type=orm.Bool, default=lambda: orm.Bool(True), help='Subtract isolated atoms.')
        spec.input('include_dos', valid_type=orm.Bool, default=lambda: orm.Bool(False), help='Store the DOS.')
        spec.input(
            'frames_per_shard',
            valid_type=orm.Int,
            default=lambda: orm.Int(FRAMES_PER_SHARD),
            help='Frames per shard file.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.outline(cls.build, cls.results)
        spec.output('dataset', help='The `mad.dataset` node.')
        # Every failure of this work chain comes from its inputs (the groups, the options, the name): 2xx codes, each
        # with what is wrong; `{message}` adds the details (which group, which fingerprints, which elements).
        spec.exit_code(201, 'ERROR_UNKNOWN_GROUP', message='A group of `groups` does not exist: {message}')
        spec.exit_code(202, 'ERROR_EMPTY_SELECTION', message='The groups give no result that can be a frame: {message}')
        spec.exit_code(
            203, 'ERROR_MIXED_FINGERPRINTS', message='The results mix levels of theory; choose one: {message}'
        )
        spec.exit_code(204, 'ERROR_MISSING_SUBSET', message='Some results have no subset: {message}')
        spec.exit_code(
            205, 'ERROR_MISSING_BASELINE', message='The isolated-atom baseline lacks elements of the data: {message}'
        )
        spec.exit_code(206, 'ERROR_MISSING_DOS', message='`include_dos` is set but a result has no DOS: {message}')
        spec.exit_code(207, 'ERROR_DATASET_EXISTS', message='The dataset name is taken: {message}')
        spec.exit_code(208, 'ERROR_INVALID_INPUT', message='An option of the selection is invalid: {message}')

    @staticmethod
    def validate_inputs(value, _):
        """Check the name, the fractions and the seed before anything runs."""
        try:
            validate_name(value['name'].value)
            validate_fractions(value['fractions'].get_list())
        except ValueError as exception:
            return str(exception)
        if value['seed'].value < 0:
            return f'the seed must be a non-negative integer, got {value["seed"].value}'
        if value['frames_per_shard'].value < 1:
            return 'frames_per_shard must be positive'
        return None

    def build(self):
        """Select the results, then build the frames and the dataset through the bulk-linked calcfunction.

        One step, so that the selection (plain Python objects) never has to go into a checkpoint.
        """
        name = self.inputs.name.value
        if name in existing_dataset_names():
            return self.exit_codes.ERROR_DATASET_EXISTS.format(message=f'a dataset named {name} exists already')
        try:
            selection = select_results(
                self.inputs.groups.get_list(),
                fingerprint=self.inputs.fingerprint.value if 'fingerprint' in self.inputs else None,
                outlier_max_force=self.inputs.outlier_max_force.get_dict()
                if 'outlier_max_force' in self.inputs
                else None,
                baseline=self.inputs.baseline.value,
                include_dos=self.inputs.include_dos.value,
            )
        except DatasetSelectionError as exception:
            return self.exit_codes[exception.exit_code].format(message=str(exception))
        for line in selection.describe():
            self.report(line)
        inputs = build_inputs(
            selection,
            name=name,
            seed=self.inputs.seed.value,
            fractions=self.inputs.fractions.get_list(),
            frames_per_shard=self.inputs.frames_per_shard.value,
            dos=self.inputs.include_dos.value,
        )
        outputs, _ = run_bulk_linked(BulkLinkBuildDataset, **inputs)
        self.ctx.dataset = outputs['dataset']
        return None

    def results(self):
        """Attach the dataset and put it in its group."""
        dataset = self.ctx.dataset
        self.out('dataset', dataset)
        group, _ = orm.Group.collection.get_or_create(dataset_group_label(dataset.name))
        group.add_nodes([dataset])
        self.report(
            f'dataset {dataset.name}<{dataset.pk}>: {dataset.n_frames} frames, fingerprint {dataset.fingerprint[:16]}, '
            f'content hash {dataset.content_hash[:16]}'
        )
