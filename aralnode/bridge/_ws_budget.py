"""What a WebSocket holds of its client's messages, counted against the HTTP port's
budgets of body bytes in flight (``_sockets.ConnectionTable``: per address and for
the port), as a request body is.

``MessageBudget`` stands between a socket's transport and its protocol from the
upgrade on (``_server.HeadLimits.on_upgrade``). It counts two things:

- the message being received: the bytes of a frame not all read yet and the
  fragments put together so far (each message up to ``ws_max_size``), recounted after
  each read; given back when the message is whole;
- messages the application keeps waiting (``hold`` and ``release``, through the
  socket's scope, ``WS_BUDGET``): the ``/ws`` door's invokes queued behind the one
  that runs.

Everything is given back when the connection is lost, however it is lost. A socket
alone in its budget is never refused for its size, as a body is not. Without it,
16 sockets from one address, each with a message that never ended, held +82 MiB no
budget saw; and whole messages queued on sockets whose first invoke waited (an
approval, say) were unbounded but by the queue's length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aralnode._logs import get_logger
from aralnode.bridge._sockets import BoundedWebSocket, ConnectionTable
from aralnode.core.addresses import join_host_port
from aralnode.core.errors import AralError

log = get_logger("aralnode.http")

# A fragment kept of a message being put together costs ~48 bytes besides its own
# (its bytes object, its list slot): a message of 1-byte fragments holds ~48x its size.
FRAGMENT_COST = 48
# A socket past a budget is closed "try again later": the budget frees as messages
# complete. (1009 would say its message is too large, and it is not.)
TRY_AGAIN_LATER = 1013
# The scope key under which the application finds the socket's budget (``hold``).
WS_BUDGET = "aral.ws_budget"


def wire_size(text: str) -> int:
    """A text message's bytes on the wire (UTF-8), which the budgets count: its length
    when it is ASCII (most are; no copy made), else its encoding's -- a character
    is up to 4 bytes, so counting characters let such messages hold 4x their share."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _assembled(conn: Any) -> int:
    """Bytes of the message websockets is putting together (``current_size``;
    websockets 14 calls it ``cur_size``)."""
    size = conn.current_size if hasattr(conn, "current_size") else conn.cur_size
    return int(size or 0)


class MessageBudget(asyncio.Protocol):
    """The budget of one WebSocket (the module docstring). Past a budget, a message
    being received closes the socket at once (``TRY_AGAIN_LATER``, with the
    refusal's reason, ``TOO_MANY_BODY_BYTES``, on record) and keeps nothing; a
    message the application would keep waiting is refused (``hold``)."""

    def __init__(
        self,
        ws: BoundedWebSocket,
        address: str,
        *,
        table: ConnectionTable[Any],
        on_refused: Callable[[AralError, str], None] | None = None,
    ) -> None:
        self.socket, self.address, self.on_refused = ws, address, on_refused
        self.table: ConnectionTable[Any] | None = table  # None: counted no more
        self.held = 0  # of the message being received
        self.waiting = 0  # of the messages the application keeps (``hold``)
        ws.transport.set_protocol(self)
        scope = getattr(ws, "scope", None)  # (made by the handshake, read by the app)
        if isinstance(scope, dict):
            scope[WS_BUDGET] = self
        self._recount()

    def data_received(self, data: bytes) -> None:
        self.socket.data_received(data)
        if self.table is not None:
            self._recount()

    def hold(self, size: int) -> AralError | None:
        """Take ``size`` bytes for a message the application keeps waiting; why not,
        if they do not fit (nothing is taken then). The first a socket keeps is held
        to a body's rule (never refused for its size alone); more are refused once
        the address or the port is past its budget, whoever holds it."""
        table = self.table
        if table is None or size <= 0:
            return None
        refusal = table.body_refusal(self.address, size, -1 if self.waiting else self.held)
        if refusal is None:
            table.take_body(self.address, size)
            self.waiting += size
        return refusal

    def release(self, size: int) -> None:
        """Give back what ``hold`` took for a message the application is done with."""
        table, size = self.table, min(size, self.waiting)
        if table is not None and size > 0:
            self.waiting -= size
            table.give_body(self.address, size)

    def _recount(self) -> None:
        ws, table = self.socket, self.table
        conn = ws.conn
        held = len(conn.reader.buffer) + _assembled(conn) + len(ws.frames) * FRAGMENT_COST
        more = held - self.held
        if more == 0 or table is None:
            return
        if more < 0:
            table.give_body(self.address, -more)
        elif (refusal := table.body_refusal(self.address, more, self.held + self.waiting)) is None:
            table.take_body(self.address, more)
        else:
            self._refuse(refusal)
            return
        self.held = held

    def _refuse(self, refusal: AralError) -> None:
        """Close the socket as uvicorn does on a protocol error, keeping nothing; then
        put the refusal on record."""
        ws, reason = self.socket, refusal.reason or ""
        self._give_back()
        ws.frames = []
        ws.conn.fail(TRY_AGAIN_LATER, reason)  # (its parser drops what it had read)
        ws.transport.write(b"".join(ws.conn.data_to_send()))
        if not ws.close_sent:  # (the application is told)
            ws.close_sent = True
            gone = {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER, "reason": reason}
            ws.queue.put_nowait(gone)  # type: ignore[arg-type]
        ws.transport.close()
        if self.on_refused is not None:
            client = ws.client
            try:
                self.on_refused(refusal, join_host_port(*client) if client is not None else "")
            except Exception:  # the socket is closed whatever the record's fate
                log.exception("recording a WebSocket's refusal failed")

    def _give_back(self) -> None:
        """Count no more; give back every byte held (once)."""
        table, held = self.table, self.held + self.waiting
        self.table, self.held, self.waiting = None, 0, 0
        if table is not None and held:
            table.give_body(self.address, held)

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_back()
        self.socket.connection_lost(exc)

    def eof_received(self) -> None:
        self.socket.eof_received()  # (None: the transport closes, as it did)

    def pause_writing(self) -> None:
        self.socket.pause_writing()

    def resume_writing(self) -> None:
        self.socket.resume_writing()


__all__ = ["FRAGMENT_COST", "TRY_AGAIN_LATER", "WS_BUDGET", "MessageBudget"]
