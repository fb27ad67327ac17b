"""A runner whose broker connection survives a restart of the daemon's ZeroMQ broker: :func:`connected_runner`.

aiida-core's ZeroMQ broker service listens on sockets in a new temporary folder each time it starts, and the daemon
starts it anew on ``verdi daemon start`` (``verdi daemon restart`` keeps it). A long-lived process that connected
before (the submission controller of ``aiida-mad dft submit --watch``, the demo) keeps sending to the old sockets,
where nothing receives: each process it submits afterwards is stored but never run, and stays ``created``. RabbitMQ
has no such problem (its address does not change), so only a ZeroMQ profile is checked.
"""

from __future__ import annotations

import logging

__all__ = ('broker_restarted', 'connected_runner', 'submit')

LOGGER = logging.getLogger(__name__)


def _endpoints(manager) -> tuple[str | None, str | None]:
    """Return ``(the endpoint this process is connected to, the one the broker service listens on now)``.

    ``(None, None)`` when the profile has no ZeroMQ broker or this process has no connection yet.
    """
    from aiida.brokers.zeromq import ZeromqBroker

    broker = manager.get_broker()
    if not isinstance(broker, ZeromqBroker):
        return None, None
    communicator = getattr(getattr(broker, '_resources', None), 'communicator', None)
    connected = getattr(communicator, '_router_endpoint', None)
    if connected is None:
        return None, None
    return connected, broker._router_endpoint


def broker_restarted(manager=None) -> bool:
    """Return whether this process is connected to a ZeroMQ broker service that is no longer the running one."""
    from aiida.manage import get_manager

    connected, current = _endpoints(manager or get_manager())
    return connected is not None and connected != current


def connected_runner(manager=None):
    """Return the manager's runner, connected anew first if the ZeroMQ broker service restarted since it connected.

    Call it before each submission of a long-lived process; it reads one small file.
    """
    from aiida.manage import get_manager

    manager = manager or get_manager()
    if broker_restarted(manager):
        LOGGER.info('the ZeroMQ broker restarted since this process connected to it: connecting anew')
        manager.reset_runner()
        manager.reset_broker()
    return manager.get_runner()


def submit(process, **inputs):
    """``aiida.engine.submit``, through :func:`connected_runner`: for processes that outlive a daemon stop and start."""
    from aiida.engine import submit as aiida_submit

    connected_runner()
    return aiida_submit(process, **inputs)
