"""Whether the service is draining (shutting down): set by gunicorn's master on SIGTERM, read by /readyz in every
worker.

Standard library only. The flag is one byte of an anonymous shared memory page mapped when this module is first
imported; gunicorn.conf.py imports it in the master, before any worker is forked, so the master's write is seen by
every worker, including one forked later. Imported in a process of its own (the Flask test client, the bench), it
is simply a private flag.
"""

from __future__ import annotations

import mmap

_STATE = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS: shared with every child forked after this


def start_draining() -> None:
    """From now on /readyz answers 503 in this process and in every process forked from it."""
    _STATE[0] = 1


def draining() -> bool:
    return _STATE[0] == 1
