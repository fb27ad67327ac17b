"""Stopping the test profile's AiiDA daemon reliably on a loaded machine."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

#: Seconds given to circus to answer the ``quit`` call, and to the daemon to be gone afterwards.
STOP_TIMEOUT = 60


def stop_daemon(client) -> None:
    """Stop the daemon of ``client`` and wait until it is gone, even when circus answers too slowly.

    On a loaded 2-core machine circus can miss its call timeout; the daemon (and its workers, which it started in its
    own process group) are then stopped with SIGTERM.
    """
    from aiida.engine.daemon.client import DaemonException

    try:
        client.stop_daemon(wait=True, timeout=STOP_TIMEOUT)
    except DaemonException:
        pid = client.get_daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while client.is_daemon_running and time.monotonic() < deadline:
        time.sleep(0.5)
        if client.get_daemon_pid() is not None and client._is_pid_file_stale:
            os.remove(client.circus_pid_file)
    wait_for_broker_exit(client)


def _broker_process(client):
    """Return the ``psutil.Process`` of the profile's ZeroMQ broker service if one runs, else ``None``.

    A PID file that names a process which is not a broker (the broker died and its PID was reused) is removed: the
    daemon reads it to decide whether to start a broker.
    """
    import psutil

    profile = client.profile
    if profile.process_control_backend != 'core.zeromq':
        return None
    if not profile.process_control_config.get('supervised_by_daemon', True):
        return None  # a broker the daemon does not own outlives it
    from aiida.brokers.zeromq import ZeromqBroker

    broker = ZeromqBroker(profile)
    pid = broker._get_service_pid()
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and 'broker' in ' '.join(process.cmdline()):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    with contextlib.suppress(FileNotFoundError):
        broker._service_pid_file.unlink()
    return None


def _wait_for_broker(client, seconds: float):
    """Return the broker's process if it still runs after up to ``seconds``, else ``None``."""
    deadline = time.monotonic() + seconds
    while (process := _broker_process(client)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return process


def wait_for_broker_exit(client) -> None:
    """Wait until the daemon's ZeroMQ broker service is gone; stop it with SIGTERM, then SIGKILL, if it lingers.

    ``start_daemon`` starts a broker only when none is reachable: a restart issued while the old broker is still
    shutting down would start none, and once the old one exits no worker gets a task again.
    """
    process = _wait_for_broker(client, STOP_TIMEOUT / 2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process is None:
            return
        logging.getLogger(__name__).warning(f'ZeroMQ broker {process.pid} still runs after the daemon stopped: {sig!r}')
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        process = _wait_for_broker(client, STOP_TIMEOUT / 4)
    if process is None:
        return
    raise RuntimeError(f'the ZeroMQ broker of profile {client.profile.name} (PID {process.pid}) does not stop')


def start_daemon(client) -> None:
    """Start the daemon of ``client`` and connect this process to its broker anew.

    The daemon starts a new ZeroMQ broker, on new sockets: without a new connection, what this process submits
    afterwards would never reach a worker.
    """
    from aiida_mad.controllers.broker import connected_runner

    client.start_daemon()
    connected_runner()
