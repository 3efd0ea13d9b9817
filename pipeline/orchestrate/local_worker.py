"""Set-up of the worker processes of geoseg's own local cluster, loaded by Dask (``preload``).

A terminal's Ctrl-C reaches every process of the foreground group: the workers, which the
run's client stops itself, would each die of it with a traceback. They ignore SIGINT instead;
SIGTERM, with which their nanny stops them, keeps its action. Workers of a cluster the user
runs (``--scheduler``) are theirs to stop, and do not load this.
"""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in the worker process's main thread before it starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
