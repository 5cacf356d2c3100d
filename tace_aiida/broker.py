"""The message broker a run needs, started when it is missing.

aiida-core's ZeroMQ broker (the embedded profile's) runs inside the AiiDA daemon: without a running daemon, even
``verdi run`` cannot reach it (``Broker did not become ready``). The examples and ``tace-aiida generate`` call
:func:`ensure_broker` first, so that the README's commands work on a machine just set up or just rebooted.
"""

from __future__ import annotations

import time

from aiida.engine.daemon.client import get_daemon_client
from aiida.manage import get_manager

BROKER_TIMEOUT = 60.0  # seconds the started daemon has to bring its broker up


def ensure_broker(workers: int = 1) -> bool:
    """Start the daemon with ``workers`` workers if the profile's ZeroMQ broker is not running; return whether it did.

    Profiles with RabbitMQ (a service of its own) or without a broker are left alone.
    """
    manager = get_manager()
    if manager.get_profile().process_control_backend != "core.zeromq":
        return False
    broker = manager.get_broker()
    if broker.check_service_reachable():
        return False
    client = get_daemon_client()
    if not client.is_daemon_running:
        client.start_daemon(number_workers=workers)
    deadline = time.monotonic() + BROKER_TIMEOUT
    while not broker.check_service_reachable():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the AiiDA daemon started, but its ZeroMQ broker did not within {BROKER_TIMEOUT:.0f} s; "
                               "see `verdi daemon logshow`")
        time.sleep(0.2)
    print(f"started the AiiDA daemon with {workers} worker(s): it runs the profile's ZeroMQ broker "
          "(`verdi daemon stop` ends both)")
    return True
