"""Peer changes as a bounded async iterator (``Node.peer_events``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aralnode.core.peers import PeerChange


class PeerEventStream:
    """An async iterator over peer changes, bounded.

    When the consumer falls ``maxsize`` changes behind, the oldest are discarded
    and counted in ``dropped`` (``Node.peers()`` then gives the current truth).
    It ends when ``close()`` is called or the node stops.

    Example::

        async with node.peer_events() as events:
            async for change in events:
                print(change.event, change.peer.name, change.peer.state.name)
    """

    def __init__(
        self, subscribe: Callable[[Callable[[PeerChange], None]], Callable[[], None]], maxsize: int
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._queue: deque[PeerChange] = deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self._unsubscribe = subscribe(self._push)

    def _push(self, change: PeerChange) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(change)
        self._wake.set()

    def close(self) -> None:
        """Stop listening; the iteration ends after the changes already queued."""
        if not self._closed:
            self._closed = True
            self._unsubscribe()
            self._wake.set()

    def __aiter__(self) -> PeerEventStream:
        return self

    async def __anext__(self) -> PeerChange:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    async def __aenter__(self) -> PeerEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PeerEventStream"]
