"""Whether the service is draining (shutting down): set by gunicorn's master on SIGTERM, read by /readyz in every
worker; and which worker is restarting after its max_requests, so that only one at a time does.

Standard library only. The flag is one byte of an anonymous shared memory page mapped when this module is first
imported; gunicorn.conf.py imports it in the master, before any worker is forked, so the master's write is seen by
every worker, including one forked later. Imported in a process of its own (the Flask test client, the bench), it
is simply a private flag.
"""

from __future__ import annotations

import mmap
import os

_STATE = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS: shared with every child forked after this


def start_draining() -> None:
    """From now on /readyz answers 503 in this process and in every process forked from it."""
    _STATE[0] = 1


def draining() -> bool:
    return _STATE[0] == 1


# Bytes 8..15: the pid of the worker that is restarting after its max_requests (0: none).
_RECYCLING = slice(8, 16)


def claim_recycle(pid: int) -> bool:
    """Whether the worker ``pid`` may restart now: no other live worker is restarting. A worker that restarts
    stops accepting and waits for its open connections (slow uploads among them) before it exits and the master
    forks its successor; two doing so at once would leave nobody accepting. The claim lapses when its holder is
    gone. (Two workers claiming in the same instant can both win: rare, and no worse than gunicorn alone.)"""
    holder = int.from_bytes(_STATE[_RECYCLING], "little")
    if holder not in (0, pid) and _alive(holder):
        return False
    _STATE[_RECYCLING] = pid.to_bytes(8, "little")
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
