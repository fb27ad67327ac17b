"""CalcJob monitors of the training CalcJobs (``aiida.calculations.monitors`` entry points).

A monitor reads a running job's files through the transport; it lives apart from the CalcJob because it reuses the
parser's readers, and the parser imports the CalcJob (a monitor inside the CalcJob's module would close that cycle).
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from aiida_mad.parsers.metatrain import parse_metrics

__all__ = ('report_progress',)


def report_progress(node, transport) -> None:
    """CalcJob monitor (``mad.metatrain.progress``): report each newly logged epoch of a running training.

    Reads ``train.csv`` in the remote working directory and writes one report line per new epoch (epoch, learning
    rate, losses), which ``verdi process report`` shows while the job runs. Never kills the job.
    """
    workdir = pathlib.PurePosixPath(node.get_remote_workdir())
    files = []
    for day in transport.listdir(str(workdir / 'outputs')) if transport.isdir(str(workdir / 'outputs')) else []:
        for moment in transport.listdir(str(workdir / 'outputs' / day)):
            path = workdir / 'outputs' / day / moment / 'train.csv'
            if transport.isfile(str(path)):
                files.append(path)
    if not files:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = pathlib.Path(folder) / 'train.csv'
        transport.getfile(str(sorted(files)[-1]), str(local))
        try:
            arrays, columns = parse_metrics(local.read_text(encoding='utf-8'))
        except ValueError:
            return None
    epochs = arrays.get('epoch')
    if epochs is None or not len(epochs):
        return None
    last = node.base.extras.get('mad_reported_epoch', -1)
    for row in np.flatnonzero(epochs > last):
        parts = [f'epoch {int(epochs[row])}']
        parts += [f'{columns[name]["header"]} {values[row]:.4g}' for name, values in arrays.items() if 'loss' in name]
        node.logger.report(' | '.join(parts))
    node.base.extras.set('mad_reported_epoch', int(epochs[-1]))
    return None
