"""``aiida-mad demo``: the data pipeline on a few tiny structures, through the daemon, resumable."""

import click
from aiida.cmdline.utils import decorators, echo

from . import params
from .utils import require_daemon

#: The stages of :mod:`aiida_mad.demo`; kept here so that ``--help`` needs no heavy import.
STAGES = ('structures', 'labelling', 'isolated-atoms', 'dataset', 'export', 'training', 'evaluate', 'active-learning')


@click.command('demo')
@params.PW_CODE()
@params.PSEUDO_FAMILY(default='offline', show_default=True)
@click.option(
    '-o',
    '--output-dir',
    type=params.types.OutputPathParamType(file_okay=False),
    default='mad-demo',
    show_default=True,
    help='Folder of the exports: export/ (extended XYZ, archives, chemiscope) and record/ (with the HTML report).',
)
@click.option(
    '-T',
    '--train-code',
    default='mtt@localhost',
    show_default=True,
    help='The metatrain code of the training stage (`aiida-mad setup localhost` makes it); the MACE and predict codes '
    'of the later stages are those of its computer.',
)
@click.option('--skip-training', is_flag=True, help='Stop after the export: no training, evaluate or active learning.')
@click.option('--until', type=click.Choice(STAGES), help='Stop after this stage (a later run goes on from there).')
@click.option(
    '--num-mpiprocs-per-machine',
    type=click.IntRange(min=1),
    default=None,
    help='MPI ranks of each pw.x (default 1); the runs at once follow, so that ranks in all never exceed the cores.',
)
@params.TIMEOUT(help='Seconds to wait for the work chains of one stage before giving up waiting (they go on).')
@decorators.with_dbenv()
def cmd_demo(code, pseudo_family, output_dir, train_code, skip_training, until, num_mpiprocs_per_machine, timeout):
    """Run the data pipeline on a few tiny structures of every subset, through the daemon.

    Stages: bundled seeds and one tiny structure per subset; labelling with the `demo` protocol (the offline family
    at converged-enough cutoffs, 85/340 Ry) through the submission controller; the isolated atoms of the elements
    present; the dataset `mad-demo`; its exports and record folder with the HTML report; a tiny PET model and its
    errors; one iteration of active learning (2 tiny MACE models, 20 candidates, at most 2 labelled; skipped without
    a MACE code). A stage skips what exists already, so running the demo again after an interruption goes on where it
    stopped and repeats nothing. About 10 minutes on 2 cores.
    """
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_mad.demo import DATASET_NAME, DFT_GROUP, PROTOCOL, STRUCTURES_GROUP, Demo, DemoError

    training = not skip_training and until in (None, 'training', 'evaluate', 'active-learning')
    mtt = None
    if training:
        try:
            mtt = orm.load_code(train_code)
        except (NotExistent, MultipleObjectsError) as exception:
            raise click.BadParameter(
                f'{exception}; make it with `aiida-mad setup localhost`, or pass --skip-training',
                param_hint='--train-code',
            ) from None
    require_daemon()

    demo = Demo(
        code,
        pseudo_family.label,
        output_dir,
        train_code=mtt,
        timeout=timeout,
        num_mpiprocs=num_mpiprocs_per_machine,
        report=echo.echo,
    )
    try:
        result = demo.run(until=until)
    except DemoError as exception:
        echo.echo_critical(f'{exception}\nRun `aiida-mad demo` again to go on from there.')

    echo.echo('')
    echo.echo_success(f'demo done: {", ".join(result.stages)}')
    echo.echo(f'  structures   {STRUCTURES_GROUP}/<subset> and {STRUCTURES_GROUP}')
    echo.echo(f'  DFT results  {DFT_GROUP}')
    if result.dataset is not None:
        echo.echo(f'  dataset      {DATASET_NAME}<{result.dataset.pk}>')
    if result.record_dir is not None:
        echo.echo(f'  exports      {result.export_dir}')
        echo.echo(f'  record       {result.record_dir}')
        echo.echo(f'  report       {result.record_dir / "mad.report.html"}')
    if result.training is not None:
        echo.echo(f'  model        {result.training.outputs.model.pk} (TrainWorkChain<{result.training.pk}>)')
    echo.echo('Explore them with:')
    echo.echo(f'  verdi group list -a -p {STRUCTURES_GROUP.split("/")[0]}')
    echo.echo('  verdi process list -a -p 1')
    echo.echo(
        f'  aiida-mad dft status {STRUCTURES_GROUP} --process-group {DFT_GROUP} -X {code.full_label} -P {PROTOCOL} '
        f'-F {pseudo_family.label}'
    )
    if result.dataset is not None:
        echo.echo(f'  aiida-mad dataset show {DATASET_NAME}')
        echo.echo(f'  aiida-mad query frames {DATASET_NAME}')
        echo.echo(f'  verdi node show {result.dataset.pk}')
    if result.training is not None:
        echo.echo(f'  aiida-mad model show {result.training.outputs.model.pk}')
