"""Daemon stopped in the middle of an active-learning iteration: after a restart nothing finished is run again.

One iteration of ``mad.active_learning`` through the real daemon (ZeroMQ broker): the pretrained committee of two tiny
MACE models of ``tests/workflows/test_active_learning.py``, four Si candidates of at most 2 atoms (pw.x stops on
some of the H ones, "too many r-vectors", which is the failure path, tested elsewhere), DIRECT down to two,
labelled with the real pw.x (``fast``) one at a time, and a production model of another architecture (a real tiny
PET) trained on the grown dataset. As soon as the first pw.x calculation exists the daemon is stopped, while that
DFT work chain is still in flight; then it is started again. The run must finish with exactly one child of each step
(pool, prediction, selection, dataset, calibration, production training), one DFT work chain per kept structure with
one pw.x calculation each, and one metatrain calculation.
"""

from __future__ import annotations

import collections
import time
import uuid as uuid_module

import pytest
from aiida import orm
from aiida.engine import submit

from aiida_mad.controllers.broker import broker_restarted, connected_runner
from aiida_mad.workflows.active_learning import production_inputs
from tests.daemon import stop_daemon
from tests.workflows.test_active_learning import POOL, al_builder, committee  # noqa: F401 (the fixture)

PW_PROCESS_TYPE = 'aiida.calculations:quantumespresso.pw'
DFT_PROCESS_TYPE = 'aiida.workflows:mad.dft'


def daemon_log_tail(client, lines: int = 40) -> str:
    """Return the last ``lines`` lines of the daemon's and of its broker's logs, to say why a run did not go on."""
    tails = []
    for name, path in (('daemon', client.daemon_log_file), ('broker', client._zmq_broker_service_log_file)):
        try:
            with open(path, encoding='utf-8', errors='replace') as handle:
                tails.append(f'--- {name} log {path}:\n' + ''.join(collections.deque(handle, lines)))
        except OSError as exception:
            tails.append(f'--- no {name} log: {exception}')
    return '\n'.join(tails)


def wait_for(condition, seconds: float, what):
    """Poll ``condition`` every 0.2 s until it is true; fail with ``what()`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


@pytest.mark.scenario('daemon restarted mid active-learning iteration')
@pytest.mark.timeout(1800)
def test_daemon_restart_mid_iteration_repeats_nothing(
    dataset,
    committee,  # noqa: F811 (the fixture of tests/workflows/test_active_learning.py)
    mace,
    mtt,
    predictor,
    pw_code,
    started_daemon_client,
    figures,
):
    name = f'al-restart-{uuid_module.uuid4().hex[:8]}'
    builder = al_builder(
        dataset,
        committee,
        mace,
        predictor,
        pw_code,
        name=name,
        pool=orm.Dict({**POOL, 'count': 4, 'element_pool': ['Si']}),
        max_iterations=orm.Int(1),
        max_concurrent=orm.Int(1),
        final_retrain=orm.Bool(False),
    )
    builder.production = production_inputs(mtt, dataset, 'tiny')
    node = submit(builder)

    def pw_calculations():
        return [item for item in node.called_descendants if item.process_type == PW_PROCESS_TYPE]

    def state():
        children = [(child.process_label, child.pk, child.process_state) for child in node.called]
        return f'{node.process_state} {node.process_status}; children {children}'

    wait_for(lambda: pw_calculations() or node.is_terminated, 600, lambda: f'no pw.x calculation in 10 min: {state()}')
    stop_daemon(started_daemon_client)
    assert not started_daemon_client.is_daemon_running
    in_flight = [item for item in node.called if item.process_type == DFT_PROCESS_TYPE and not item.is_terminated]
    assert not node.is_terminated and in_flight, f'nothing was in flight when the daemon stopped: {state()}'
    figures['DFT in flight at stop'] = len(in_flight)

    started_daemon_client.start_daemon()
    # The new daemon has a new ZeroMQ broker: this process, connected to the old one, must connect anew.
    assert broker_restarted(), 'the daemon restarted with the broker this process was connected to'
    connected_runner()
    assert not broker_restarted()
    wait_for(
        lambda: node.is_terminated,
        900,
        lambda: f'not finished 15 min after the restart: {state()}\n{daemon_log_tail(started_daemon_client)}',
    )
    assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}: {state()}'

    # Exactly one child of every step, one DFT work chain per kept structure: nothing ran twice.
    entry = node.outputs.record.get_dict()['iterations'][0]
    assert entry['downsampled'] == 2 and entry['labelled'] == 2 and entry['failed'] == 0, entry
    called = collections.Counter(child.process_type for child in node.called)
    assert called == {
        'aiida.calculations:mad.al.create_pool': 1,
        'aiida.calculations:mad.predict.pool': 1,
        'aiida.calculations:mad.al.select': 1,
        DFT_PROCESS_TYPE: 2,
        'aiida.workflows:mad.dataset': 1,
        'aiida.calculations:mad.al.calibrate': 1,
        'aiida.workflows:mad.train': 1,
    }, called
    dft = [child for child in node.called if child.process_type == DFT_PROCESS_TYPE]
    structures = {child.inputs.structure.uuid for child in dft}
    kept = {structure.uuid for structure in orm.load_group(f'mad/al/{name}/structures').nodes}
    assert structures == kept and len(structures) == 2
    for child in dft:
        runs = [item for item in child.called_descendants if item.process_type == PW_PROCESS_TYPE]
        assert len(runs) == 1 and runs[0].is_finished_ok, [(item.pk, item.exit_status) for item in runs]
    training = next(child for child in node.called if child.process_type == 'aiida.workflows:mad.train')
    trainings = [
        item for item in training.called_descendants if item.process_type == 'aiida.calculations:mad.metatrain'
    ]
    assert len(trainings) == 1 and trainings[0].is_finished_ok
    assert node.outputs.production_model.uuid == trainings[0].outputs.model.uuid
    assert node.outputs.dataset.n_frames == dataset.n_frames + 2
    figures['DFT runs'] = len(pw_calculations())
    figures['trainings'] = len(trainings)
    figures['duplicates'] = 0
