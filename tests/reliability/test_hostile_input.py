"""Hostile and broken input at the Python API: refused with an error naming the item, nothing stored or run.

- Every ``mad.*`` process class (work chains and calculation jobs, found through their entry points): every
  top-level input port given a node of the wrong type through its builder is refused naming the port.
- Every ``mad.*`` calcfunction called with nodes of the wrong type: refused naming a parameter, nothing stored.
- ``MadDftWorkChain``: absurd numbers (NaN, infinity, negative, zero) for the k-point distance, the outlier
  threshold and the bands factor, given as protocol overrides or as inputs of a launch, are refused naming the key or
  port, before anything is stored.
- ``DftSubmissionController``: negative or zero ``max_concurrent``; empty, blank, 5 000-character and
  control-character process group labels.
- The job script: a real labelling run (the crashing pw.x wrapper) whose structure label, description and subset are
  shell metacharacters, quotes, unicode, a 5 000-character string and a fake ``#SBATCH`` line, with a code whose
  executable lies in a folder named with shell metacharacters: the written ``_aiidasubmit.sh`` holds none of the
  user's text except the executable's path, quoted as one word, and no command hidden in any of it ran.
"""

from __future__ import annotations

import math
import pathlib
import shlex
import subprocess
from importlib.metadata import entry_points

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, WorkflowFactory
from ase.build import bulk

from aiida_mad.controllers.dft import DftSubmissionController
from aiida_mad.workflows.dft import MadDftWorkChain
from tests.fixtures.fake_pw.utils import fault_code

OVERRIDES = {'pseudo_family': 'offline'}


def node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def mad_processes():
    """Return ``{entry point: class or calcfunction}`` of every ``mad.*`` work chain and calculation."""
    found = {}
    for group, factory in (('aiida.workflows', WorkflowFactory), ('aiida.calculations', CalculationFactory)):
        for entry in entry_points(group=group):
            if entry.name.startswith('mad.'):
                found[entry.name] = factory(entry.name)
    return found


def wrong_node(port):
    """Return a node that ``port`` does not accept (a ``Str``, or a ``Bool`` where ``Str`` is fine)."""
    for candidate in (orm.Str('hostile; rm -rf ~'), orm.Bool(True), orm.ArrayData()):
        valid = port.valid_type
        if valid is None or not isinstance(candidate, valid):
            return candidate
    raise AssertionError(f'no wrong type for {port.name}')


@pytest.mark.scenario('hostile input: wrong node types everywhere')
def test_every_process_refuses_wrong_node_types_naming_the_port(figures):
    tried = processes = 0
    before = node_count()
    for name, process in mad_processes().items():
        if hasattr(process, 'is_process_function') and process.is_process_function:
            spec = process.spec()
            ports = {key: port for key, port in spec.inputs.items() if not key.startswith('metadata')}
            arguments = {key: wrong_node(port) for key, port in ports.items() if getattr(port, 'valid_type', None)}
            if not arguments:  # only dynamic namespaces: nothing typed to get wrong
                continue
            stored = node_count()
            with pytest.raises((ValueError, TypeError)) as raised:
                process(**arguments)
            message = str(raised.value)
            assert any(f"'{key}'" in message or f'`{key}`' in message for key in arguments), (name, message)
            assert node_count() == stored, name  # refused before the function's node was stored
            tried += 1
        else:
            builder = process.get_builder()
            for key, port in process.spec().inputs.items():
                if key == 'metadata' or not hasattr(port, 'valid_type') or port.valid_type is None:
                    continue
                if hasattr(port, 'ports'):  # a namespace: its own ports are checked where they are defined
                    continue
                with pytest.raises(ValueError, match=f"'{key}'"):
                    setattr(builder, key, wrong_node(port))
                tried += 1
        processes += 1
    assert node_count() == before  # nothing stored, not even the wrong nodes
    assert processes >= 20, processes
    figures['processes'] = processes
    figures['inputs tried'] = tried


@pytest.mark.scenario('hostile input: absurd numbers')
def test_absurd_numbers_are_refused_naming_the_key(crash_code, offline_family, figures):
    silicon = orm.StructureData(ase=bulk('Si', 'fcc', a=3.9))
    tried = 0
    before = node_count()
    absurd = (math.nan, math.inf, -math.inf, -1.0, 0.0)
    for key in ('kpoints_distance',):
        for value in absurd:
            with pytest.raises(ValueError, match=f'`{key}`'):
                MadDftWorkChain.get_builder_from_protocol(crash_code, silicon, 'fast', {**OVERRIDES, key: value})
            tried += 1
    for value in absurd:
        with pytest.raises(ValueError, match=r'`outlier_max_force\.default`'):
            MadDftWorkChain.get_builder_from_protocol(
                crash_code, silicon, 'fast', {**OVERRIDES, 'outlier_max_force': {'default': value}}
            )
        tried += 1
    with pytest.raises(ValueError, match='`outlier_max_force` must map subsets'):
        MadDftWorkChain.get_builder_from_protocol(crash_code, silicon, 'fast', {**OVERRIDES, 'outlier_max_force': 3.0})
    with pytest.raises(ValueError, match='`max_iterations`'):
        MadDftWorkChain.get_builder_from_protocol(crash_code, silicon, 'fast', {**OVERRIDES, 'max_iterations': -3})
    with pytest.raises(ValueError, match=r'`meta_parameters\.bands_factor`'):
        MadDftWorkChain.get_builder_from_protocol(
            crash_code, silicon, 'fast', {**OVERRIDES, 'meta_parameters': {'bands_factor': -4}}
        )
    tried += 3
    # The same numbers given to a launch directly: refused by the input validation, before any node is stored.
    for port, value in [('kpoints_distance', math.nan), ('kpoints_distance', -0.5), ('outlier_max_force', math.inf)]:
        builder = MadDftWorkChain.get_builder_from_protocol(crash_code, silicon, 'fast', OVERRIDES)
        setattr(builder, port, orm.Float(value))
        with pytest.raises(ValueError, match=f'`{port}` must be a positive finite number'):
            run_get_node(builder)
        tried += 1
    builder = MadDftWorkChain.get_builder_from_protocol(crash_code, silicon, 'fast', OVERRIDES)
    builder.bands_factor = orm.Int(-2)
    with pytest.raises(ValueError, match='`bands_factor` must be at least 1'):
        run_get_node(builder)
    tried += 1
    # Controller: counts and process group labels.
    parent = orm.Group(label='reliability/hostile/parent').store()
    fields = {'parent_group_label': parent.label, 'code': crash_code.full_label, 'protocol': 'fast'}
    for count in (-1, 0):
        with pytest.raises(ValueError, match='max_concurrent must be at least 1'):
            DftSubmissionController(**fields, group_label='reliability/hostile/dft', max_concurrent=count)
        tried += 1
    bad_labels = [
        ('', 'is empty'),
        (' ', 'is empty'),
        ('x' * 5000, 'at most 255'),
        ('a\tb', 'control characters'),
        ('mad/dft/\u202eevil', 'U\\+202E'),
        (' mad/dft', 'white space'),
        ('mad//dft', 'empty path component'),
    ]
    for label, message in bad_labels:
        with pytest.raises(ValueError, match=message):
            DftSubmissionController(**fields, group_label=label, max_concurrent=1)
        tried += 1
    # Unicode and shell metacharacters are text: accepted as labels, and building the controller stores nothing.
    DftSubmissionController(**fields, group_label='reliability/hostile/Ωμέγα; $(touch x) `id`', max_concurrent=1)
    # Nothing was stored by any refusal (the parent group is a group, not a node; the silicon was never stored).
    assert node_count() == before
    figures['inputs tried'] = tried
    figures['stored'] = node_count() - before


HOSTILE = [
    '; touch {marker}-1 #',
    '$(touch {marker}-2)',
    '`touch {marker}-3`',
    '"double" \'single\' \\ back',
    'Ωμέγα 中文 ✓ \u202e',
    '\n#SBATCH --wrap="touch {marker}-4"\ntouch {marker}-5',
]


@pytest.mark.scenario('hostile input: no user text unquoted in the job script')
def test_user_text_never_reaches_the_job_script_unquoted(pw_code, offline_family, tmp_path, figures):
    marker = tmp_path / 'pwned'
    texts = [text.format(marker=marker) for text in HOSTILE] + ['x' * 5000]
    folder = tmp_path / 'pw dir; $(touch pwned-6) `touch pwned-7`'  # relative: the job's folder, or the cwd
    folder.mkdir()
    code = fault_code(pw_code, 'crash', directory=folder)
    structure = orm.StructureData(ase=bulk('Si', 'fcc', a=3.9))
    structure.label = texts[0] + texts[1]
    structure.description = '\n'.join(texts)
    structure.base.extras.set('mad_subset', texts[2] + texts[5])
    structure.store()
    builder = MadDftWorkChain.get_builder_from_protocol(code, structure, 'fast', OVERRIDES)
    assert builder.subset.value == texts[2] + texts[5]
    _, node = run_get_node(builder)
    assert node.exit_status == MadDftWorkChain.exit_codes.ERROR_SCF_FAILED.status  # the crash, as expected
    (calculation,) = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    script = calculation.base.repository.get_object_content('_aiidasubmit.sh')
    for text in texts:
        for line in filter(None, (part.strip() for part in text.splitlines())):
            assert line not in script, (line, script)
    # The only user text in the script is the executable's path, one quoted word of the launch line.
    launch = next(line for line in script.splitlines() if 'pw_fault_crash.sh' in line)
    assert str(folder / 'pw_fault_crash.sh') in shlex.split(launch), launch
    assert subprocess.run(['bash', '-n'], input=script, text=True, check=False).returncode == 0
    # Nothing hidden in the text ran: no marker file anywhere the job or this process could have written one.
    remote = calculation.outputs.remote_folder.get_remote_path()
    places = (tmp_path.glob('**/pwned*'), pathlib.Path(remote).glob('**/pwned*'), pathlib.Path.cwd().glob('pwned*'))
    leftovers = [str(path) for place in places for path in place]
    assert leftovers == []
    figures['hostile strings'] = len(texts) + 1
    figures['commands run'] = 0
