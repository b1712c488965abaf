"""A call ends with its HTTP client: ``DisconnectWatch`` cancels a call whose
connection is lost while it runs (REST requests, MCP tool calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from aralnode.core.errors import Cancelled

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Cancelled):
    """The HTTP client went away while its call ran: the call was cancelled."""

    default_reason = "CLIENT_DISCONNECTED"


# The scope key under which our bounded protocols (``_server._HeadGuard``) put the
# connection a request came on, so that a call can ask to hear when it is lost.
CONNECTION = "aral.connection"


class ReportsLoss(Protocol):
    """A connection that calls back when it is lost (``_server._HeadGuard``)."""

    lost: bool

    def on_lost(self, callback: Callable[[], None]) -> None: ...

    def not_on_lost(self, callback: Callable[[], None]) -> None: ...


class DisconnectWatch:
    """Cancels the task it is entered in once the HTTP client goes away, so that a
    call nobody waits for any more ends, and gives its slot back; raises
    ``ClientGone`` out of the block then.

    Enter it once the request body has been read: from then on, the only message
    ``receive`` can give is ``http.disconnect``. Used as::

        async with DisconnectWatch(receive, scope):
            response = await call(ctx, request)

    On the node's own HTTP port the connection (named in the request's ``scope``)
    calls back when it is lost, so nothing runs per request but a set's add and
    discard; for any other server, a task waits on ``receive`` for the disconnect
    (a task per request: about a tenth of a REST call's CPU).
    """

    __slots__ = ("_connection", "_done", "_receive", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive, scope: Scope | None = None) -> None:
        self._receive = receive
        self.gone = False
        self._done = False
        self._watcher: asyncio.Task[None] | None = None
        self._connection: ReportsLoss | None = scope.get(CONNECTION) if scope is not None else None

    async def __aenter__(self) -> DisconnectWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        connection = self._connection
        if connection is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        elif connection.lost:  # already gone: as the watcher's first receive would say
            self._client_gone()
        else:
            connection.on_lost(self._client_gone)
        return self

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._client_gone()

    def _client_gone(self) -> None:
        if not self._done:
            self.gone = True
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._done = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._connection is not None:
            self._connection.not_on_lost(self._client_gone)
        # Our cancellation, not anyone else's (a stopping server's): say so.
        ours = self.gone and self._task.uncancel() == 0
        if ours and exc_type is asyncio.CancelledError:
            raise ClientGone("the client went away before its call ended") from None
