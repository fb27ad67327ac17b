"""Helpers shared by the ``aiida-mad`` commands."""

from aiida.cmdline.utils import echo


def require_daemon():
    """Stop with a clear message if the daemon of the profile is not running (the ZeroMQ broker needs it to submit)."""
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    if not client.is_daemon_running:
        name = client.profile.name
        echo.echo_critical(
            f'the daemon of profile `{name}` is not running: start it with `verdi -p {name} daemon start`'
        )
