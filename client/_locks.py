"""``ChannelLock``: one request at a time per channel, across threads and processes.

The node's credit rule allows one unpaid record per channel, and the client's pending entry
(docs/protocol.md §6) describes one request: a second request on the same channel while the
first is still being answered would be refused (402), or worse, would resolve the first one's
record as if it had been interrupted. Inside a process a ``threading.Lock`` orders requests;
across processes (two ``tallystick chat`` runs, two SDK programs on one store) a lock row in
the store does, held under a lease that a heartbeat thread renews. A holder that crashed
frees it at once on the same host (its pid is gone), or when its lease runs out elsewhere.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from ._errors import ClientError
from ._store import Store
from ._types import LockHolder

__all__ = ["LEASE_S", "ChannelLock", "LockWait"]

log = logging.getLogger("tallystick.client")

LEASE_S = 30.0  # a holder that stops renewing loses the lock after this long
POLL_S = 0.2

LockWait = Callable[[bytes, LockHolder], None]  # told once when a request starts waiting


class ChannelLock:
    """Held from sending a request until its answer is resolved; ``acquire``/``release``."""

    def __init__(
        self,
        store: Store,
        channel_id: bytes,
        *,
        lease_s: float = LEASE_S,
        on_wait: LockWait | None = None,
    ) -> None:
        self._store = store
        self._channel_id = channel_id
        self._lease_s = lease_s
        self._on_wait = on_wait
        self._local = threading.Lock()
        self._owner = f"{os.getpid()}:{uuid.uuid4().hex}"
        self._stop: threading.Event | None = None

    def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the channel; False if it stayed busy."""
        deadline = time.monotonic() + timeout
        if not self._local.acquire(timeout=timeout):
            return False
        try:
            told = False
            while holder := self._store.try_lock(self._channel_id, self._owner, self._lease_s):
                if time.monotonic() > deadline:
                    self._local.release()
                    return False
                if not told:
                    log.info(
                        "channel 0x%s is in use by pid %d on %s; waiting",
                        self._channel_id.hex(),
                        holder.pid,
                        holder.host,
                    )
                    if self._on_wait is not None:
                        self._on_wait(self._channel_id, holder)
                    told = True
                time.sleep(POLL_S)
        except BaseException:
            self._local.release()
            raise
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._stop,), daemon=True).start()
        return True

    def release(self) -> None:
        if self._stop is None:
            raise ClientError("release of a channel lock that is not held")
        self._stop.set()
        self._stop = None
        try:
            self._store.unlock(self._channel_id, self._owner)
        finally:
            self._local.release()

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self._lease_s / 3):
            try:
                if not self._store.renew_lock(self._channel_id, self._owner, self._lease_s):
                    return  # lost it (this process stalled past the lease): nothing to renew
            except Exception:  # the store is closed or failing: the lease runs out on its own
                return
