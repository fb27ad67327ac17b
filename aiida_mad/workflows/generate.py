"""``GenerateWorkChain`` (``mad.generate``): generate one structure subset into its group, batch by batch."""

from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, while_

from aiida_mad.generation import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIN_DISTANCE_FACTOR,
    GENERATED_SUBSETS,
    GenerationError,
    GenerationProgress,
    StructureGeneration,
)

__all__ = ('GenerateWorkChain',)


def _generation_from_inputs(inputs) -> StructureGeneration:
    """Return the :class:`StructureGeneration` the inputs describe; raises :class:`GenerationError` on bad input."""
    return StructureGeneration(
        inputs['subset'].value,
        parent_groups=inputs['parent_groups'].get_list() if 'parent_groups' in inputs else None,
        parents=list(inputs.get('structures', {}).values()),
        count=inputs['count'].value if 'count' in inputs else None,
        seed=inputs['seed'].value,
        parameters=inputs['parameters'].get_dict() if 'parameters' in inputs else None,
        element_pool=inputs['element_pool'].get_list() if 'element_pool' in inputs else None,
        min_distance_factor=inputs['min_distance_factor'].value,
        max_attempts=inputs['max_attempts'].value if 'max_attempts' in inputs else None,
        batch_size=inputs.get('batch_size', DEFAULT_BATCH_SIZE),
        group_label=inputs['group_label'].value if 'group_label' in inputs else None,
    )


def validate_inputs(inputs, _):
    """Validate all inputs together, parent groups included, so that bad input fails before anything is stored."""
    if 'subset' not in inputs:
        return None
    try:
        _generation_from_inputs(inputs)
    except GenerationError as exception:
        return str(exception)
    return None


class GenerateWorkChain(WorkChain):
    """Generate ``count`` structures of a subset from parent structures into ``mad/structures/<subset>``.

    Each step makes one batch with the calcfunction ``generate_structures`` (called from the step, so it hangs below
    this work chain in the provenance graph) and adds the new structures to the group. The planning, seeds and keys
    are those of :class:`aiida_mad.generation.StructureGeneration`, shared with ``aiida-mad structures generate``:
    the same inputs give the same structures, and structures already in the group are not made again.
    """

    @classmethod
    def define(cls, spec):
        """Define the process specification."""
        super().define(spec)
        spec.input('subset', valid_type=orm.Str, help=f'The subset to generate: {", ".join(GENERATED_SUBSETS)}.')
        spec.input(
            'parent_groups',
            valid_type=orm.List,
            required=False,
            help="Labels of the groups holding the parents; defaults to the subset generator's groups.",
        )
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Parent structures given directly (together with `parent_groups` if both are given).',
        )
        spec.input(
            'count',
            valid_type=orm.Int,
            required=False,
            help='Items to have in the group: structures, or parent crystals for shiftml-molfrags (default: all).',
        )
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='The seed, a non-negative integer.')
        spec.input('parameters', valid_type=orm.Dict, required=False, help='Generator parameters.')
        spec.input('element_pool', valid_type=orm.List, required=False, help='Restrict the pool to these elements.')
        spec.input(
            'min_distance_factor',
            valid_type=orm.Float,
            default=lambda: orm.Float(DEFAULT_MIN_DISTANCE_FACTOR),
            help='Pairs closer than this times the sum of covalent radii are refused.',
        )
        spec.input('max_attempts', valid_type=orm.Int, required=False, help='Draws per item before it is refused.')
        spec.input('group_label', valid_type=orm.Str, required=False, help='Target group (mad/structures/<subset>).')
        spec.input(
            'batch_size',
            valid_type=int,
            non_db=True,
            default=DEFAULT_BATCH_SIZE,
            help='Items per calcfunction call; does not change the structures.',
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.should_run_batch)(cls.run_batch),
            cls.finalize,
        )
        spec.exit_code(
            201,
            'ERROR_INVALID_INPUTS',
            message='The inputs no longer describe a valid generation (groups changed after submission?): {message}',
        )
        spec.exit_code(
            310,
            'ERROR_TOO_MANY_REFUSED',
            message='Only {done} of {target} items have structures: {refused} items were refused. {examples}',
        )

    @property
    def generation(self) -> StructureGeneration:
        """The generation plan; rebuilt from the inputs after a reload (it holds nodes, so it is not checkpointed)."""
        if getattr(self, '_generation', None) is None:
            self._generation = _generation_from_inputs(self.inputs)
        return self._generation

    def setup(self):
        """Check the inputs against the database once more and start the progress record."""
        try:
            generation = self.generation
        except GenerationError as exception:
            return self.exit_codes.ERROR_INVALID_INPUTS.format(message=str(exception))
        self.ctx.progress = GenerationProgress().as_dict()
        self.report(
            f'generating {generation.target} item(s) of {generation.subset} into {generation.group_label} from '
            f'{len(generation.candidates)} eligible parent(s), seed {generation.seed}'
        )
        return None

    def should_run_batch(self) -> bool:
        """Return whether items remain to be generated."""
        return not self.generation.finished(GenerationProgress.from_dict(self.ctx.progress))

    def run_batch(self):
        """Plan and generate one batch, and add its structures to the group."""
        progress = GenerationProgress.from_dict(self.ctx.progress)
        items = self.generation.next_batch(progress)
        structures = self.generation.run_batch(items, progress)
        self.ctx.progress = progress.as_dict()
        if items:
            self.report(f'batch of {len(items)} item(s): {len(structures)} structure(s) stored')

    def finalize(self):
        """Report what was done; fail with 310 if too many items were refused to reach the count."""
        generation = self.generation
        progress = GenerationProgress.from_dict(self.ctx.progress)
        self.node.base.extras.set_many(
            {
                'mad_subset': generation.subset,
                'mad_done': progress.done,
                'mad_new_structures': progress.new_structures,
                'mad_existing': progress.existing,
                'mad_refused': progress.refused,
            }
        )
        self.report(generation.summary(progress))
        if progress.done < generation.target and not generation.generator.per_parent:
            return self.exit_codes.ERROR_TOO_MANY_REFUSED.format(
                done=progress.done,
                target=generation.target,
                refused=progress.refused + progress.refused_before,
                examples='; '.join(progress.examples[:3]),
            )
        return None
