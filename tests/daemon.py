"""Stopping the test profile's AiiDA daemon reliably on a loaded machine."""

from __future__ import annotations

import contextlib
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
