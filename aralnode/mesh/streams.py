"""The gRPC side of A2A channels: accept and dial ``AgentNode.Channel`` streams.

Everything protocol-shaped lives in ``aralnode.core.channel`` (sans-IO) and a link's
reading and writing in ``aralnode.mesh.link``; this module turns a gRPC bidi stream
into a link's frames and ``write``, verifies the opens, and redials with exponential
backoff and jitter (``ChannelStreams``). Frames travel as raw bytes (no grpc
(de)serializer), so garbage on the stream is our clean ``close`` with a status,
never grpc's INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core.audit import Point
from aralnode.core.channel import (
    MAX_OPEN_BYTES,
    close_error,
    close_frame,
    frame_keys,
    make_open,
    parse_frame,
    read_open,
    sealed_close,
    verify_open,
)
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, InternalError, Unavailable
from aralnode.core.governance import Direction
from aralnode.mesh.attach import accept_link, establish, open_params
from aralnode.mesh.hub import ChannelHub
from aralnode.mesh.link import Link
from aralnode.mesh.receiver import CHANNEL_ACTION
from aralnode.mesh.state import PeerChannel
from aralnode.service.refusals import refused
from aralnode.transport.grpc_client import NodeClient, channel_options
from aralnode.transport.status import abort, from_rpc_error
from aralnode.transport.tls_grpc import ClientTls, open_channel, peer_certificate

# The connection point (``service.connections.admit_peer``): raises to refuse a peer.
Admit = Callable[[str, str], None]

log = get_logger("aralnode.channel")

Context = grpc.aio.ServicerContext[Any, Any]
CHANNEL_METHOD = f"/{pb.AGENT_NODE_SERVICE_NAME}/Channel"
# Our own gRPC channel per dial, reconnecting quickly: the redial loop does the
# backing off, grpc's own (1 s doubling to 120 s) would only add to it.
_DIAL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class ChannelStreams:
    """The hub's channels over gRPC: the ``AgentNode.Channel`` handler (``serve``) and
    one redial loop per verified peer (``dial``)."""

    def __init__(
        self,
        hub: ChannelHub,
        *,
        tls: ClientTls | None = None,
        bind_certificate: Callable[[bytes, str], object] | None = None,
        admit: Admit | None = None,
    ) -> None:
        """``tls``: dial peers over TLS, checking each is the node expected;
        ``bind_certificate`` (mTLS): an accepted open's peer certificate must be the
        opening node's (``CertRules.bind``), or the open is refused; ``admit``: the
        connection point each redial passes before the peer's key is pinned."""
        self.hub = hub
        self.tls = tls
        self.admit = admit
        self.bind_certificate = bind_certificate
        self._dials: dict[str, asyncio.Task[None]] = {}

    def dial(self, peer_id: str, address: str) -> None:
        """Keep a channel to a verified peer open (redialling as needed)."""
        task = self._dials.get(peer_id)
        if task is not None and not task.done():
            return
        pc = self.hub.peer(peer_id)
        task = asyncio.ensure_future(dial_forever(self.hub, pc, address, self.tls, self.admit))
        task.set_name(f"channel dial {peer_id}")
        self._dials[peer_id] = task

    def forget(self, peer_id: str) -> None:
        """The peer table forgot ``peer_id``: stop dialling it and release its
        channel state (``ChannelHub.forget``). A peer found again is dialled anew."""
        task = self._dials.pop(peer_id, None)
        if task is not None:
            task.cancel()
        self.hub.forget(peer_id)

    async def serve(self, requests: AsyncIterator[bytes], context: Context) -> None:
        """The ``AgentNode.Channel`` handler."""
        bind = self.bind_certificate
        if bind is None:
            await serve(self.hub, requests, context)
            return
        pem = peer_certificate(context)
        await serve(self.hub, requests, context, lambda node_id: bind(pem, node_id))

    async def close(self, grace: float = 2.0) -> None:
        """Stop dialling (the dialled links end with their dials), then close the
        hub: the links peers dialled get a ``close``; what waits fails; the stores
        close last, once nothing runs that could still write to them."""
        self.hub.stopping = True
        for task in self._dials.values():
            task.cancel()
        await asyncio.gather(*self._dials.values(), return_exceptions=True)
        await self.hub.close(grace)


async def read_frames(requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The frames of a stream, its failure as the ``AralError`` its status says."""
    try:
        async for data in requests:
            yield data
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None


def stream_write(write: Callable[[bytes], Awaitable[None]]) -> Callable[[bytes], Awaitable[None]]:
    """``write`` of either end of the stream, where a write the stream can no longer
    take ends the link like the end of the peer's frames (``CHANNEL_ENDED``), not
    as a failure of ours: grpc raises ExecuteBatchError, UsageError or AbortError
    on the accepting side, InvalidStateError or AioRpcError on the dialling one.
    An AioRpcError carries the call's status: it is kept, as the reader keeps it."""

    async def mapped(frame: bytes) -> None:
        try:
            await write(frame)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        except Exception as exc:
            raise Unavailable(
                f"the channel stream is gone ({type(exc).__name__})", reason="CHANNEL_ENDED"
            ) from None

    return mapped


async def serve(
    hub: ChannelHub,
    requests: AsyncIterator[bytes],
    context: Context,
    check_peer: Callable[[str], object] | None = None,
) -> None:
    """The ``AgentNode.Channel`` handler: verify the open, answer, run the link.

    ``check_peer`` (mTLS) raises unless the transport's peer is the node whose
    open verified (its certificate is that node's).

    The link's writer sends with ``context.write`` directly (a generator handler
    would cost every frame a hand-off to the generator's task). A write that fails
    because the stream is gone ends the link like the end of the peer's frames.
    """

    try:
        frames = read_frames(requests)
        error = await _accept(hub, frames, stream_write(context.write), context.peer(), check_peer)
    except AralError as exc:
        error = exc
    except Exception as exc:
        log.exception("channel accept failed")
        error = InternalError(f"channel failed: {type(exc).__name__}")
    if error is not None and error.reason not in _QUIET_ENDS:
        await abort(context, error)


# Ends that are not the peer's fault: the stream just stops, with status OK.
_QUIET_ENDS = ("CHANNEL_ENDED", "NODE_STOPPING", "CHANNEL_SUPERSEDED")


async def _accept(
    hub: ChannelHub,
    requests: AsyncIterator[bytes],
    write: Callable[[bytes], Awaitable[None]],
    transport_peer: str,
    check_peer: Callable[[str], object] | None = None,
) -> AralError | None:
    frames = aiter(requests)
    try:
        first = await asyncio.wait_for(anext(frames), hub.open_timeout)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        error: AralError = Unavailable("no channel open within the timeout", reason="OPEN_TIMEOUT")
        await write(close_frame(error))
        return error
    try:
        content = verify_open(
            read_open(first),
            my_id=hub.node_id,
            keyring=hub.keyring,
            replay=hub.replay,
            is_verified=hub.is_verified,
        )
        if check_peer is not None:
            check_peer(content.sender)
        # Decided before anything changes: a refused open leaves a live link alone.
        pc = hub.peer(content.sender)
        accepted = accept_link(hub, pc, content, write)
        if isinstance(accepted, AralError):
            raise accepted
        pc.address = transport_peer
    except AralError as exc:
        hub.count("channel.open_rejected")
        log.info("refused channel open from %s: %s", transport_peer, exc)
        # On record as a refused connection, as a hello that does not verify is: the
        # open's sender is not believed (the channel's own label, no caller).
        refused(
            hub.pipeline, CallContext(door="channel", peer=transport_peer), CHANNEL_ACTION,
            exc, direction=Direction.CONNECT, kind="connect", point=Point.CONNECT,
        )  # fmt: skip
        await write(close_frame(exc))
        return exc
    link, answer = accepted
    return await link.run(frames, first=answer)


# -- dialling ------------------------------------------------------------------------------


async def dial_forever(
    hub: ChannelHub,
    peer: PeerChannel,
    address: str,
    tls: ClientTls | None = None,
    admit: Admit | None = None,
) -> None:
    """Keep a channel to ``peer`` open: dial, run, and on failure redial after
    exponential backoff with full jitter. Returns when the hub stops."""
    delay = hub.backoff_initial
    while not hub.stopping:
        if peer.link is not None and peer.link.alive:
            await peer.wait_down()
            delay = hub.backoff_initial
            continue
        try:
            link_ran, error = await _dial_once(hub, peer, address, tls, admit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("dialling %s failed", peer.peer_id)
            link_ran, error = False, InternalError(f"dial failed: {type(exc).__name__}")
        if hub.stopping:
            return
        if error is not None and error.reason == "UNIMPLEMENTED":
            peer.refuse_channels()
            log.warning("peer %s does not serve channels: %s", peer.peer_id, error.message)
            return
        if not link_ran and error is None:
            continue  # the peer's own dial got through first
        if link_ran:
            delay = hub.backoff_initial
        log.info("channel to %s down (%s); redial in ~%.2fs", peer.peer_id, error, delay)
        # Full jitter (AWS architecture blog): peers that lost each other at the
        # same moment do not redial in lockstep.
        await peer.wait_up(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, hub.backoff_max)


async def _dial_once(
    hub: ChannelHub,
    peer: PeerChannel,
    address: str,
    tls: ClientTls | None = None,
    admit: Admit | None = None,
) -> tuple[bool, AralError | None]:
    """One dial: handshake, open, run the link until it ends; (whether a link ran,
    why it ended). Never raises for what the network or the peer does. Over TLS
    the peer's certificate must name ``peer.peer_id`` (``tls_grpc``)."""
    options = channel_options(hub.max_message_bytes) + _DIAL_OPTIONS
    channel = open_channel(address, options, tls, peer.peer_id)
    call: Any = None
    try:
        # A fresh handshake every dial: the peer may have restarted and forgotten
        # our key, and a channel open is accepted only from a pinned key.
        client = NodeClient(
            address,
            identity=hub.identity,
            keyring=hub.keyring,
            clock=hub.clock,
            channel=channel,
            max_message_bytes=hub.max_message_bytes,  # as on the channel's options
            card_limits=hub.settings.card_limits,
        )
        verified = await client.handshake(
            hub.card(), expected_node_id=peer.peer_id, timeout=hub.open_timeout, pin=False
        )
        if admit is not None:  # as every dial: a peer the connection point refuses (a
            admit(peer.peer_id, address)  # halt, a policy reloaded since) is pinned nowhere
        hub.keyring.pin(verified.key)
        if peer.connected:
            return False, None  # the peer dialled us meanwhile: one stream is enough
        stub: Any = channel.stream_stream(
            CHANNEL_METHOD, request_serializer=None, response_deserializer=None
        )
        call = stub()
        link = await _open(hub, peer, call)
        if isinstance(link, AralError):
            return False, link
        peer.address = address
        error = await link.run(_frames(call))
        with contextlib.suppress(Exception):
            await call.done_writing()
        return True, error
    except grpc.aio.AioRpcError as err:
        return False, from_rpc_error(err)
    except AralError as exc:
        return False, exc
    except OSError as exc:
        return False, Unavailable(f"cannot reach {address}: {exc}")
    finally:
        if call is not None:
            call.cancel()
        with contextlib.suppress(Exception):
            await channel.close(grace=None)


async def _open(hub: ChannelHub, peer: PeerChannel, call: Any) -> Link | AralError:
    """Send our open on a dialled stream, verify the answer, and attach the link;
    or why not (the peer refused, did not answer, or its own dial won meanwhile)."""
    params = open_params(hub, peer)  # no side effect until the link is kept
    sent = make_open(hub.identity, recipient=peer.peer_id, clock=hub.clock, params=params)
    peer.open_sent = True
    try:
        await call.write(sent.frame)
        try:
            first = await asyncio.wait_for(call.read(), hub.open_timeout)
        except TimeoutError:
            return Unavailable("peer did not answer the channel open", reason="OPEN_TIMEOUT")
        if first is _EOF:
            return Unavailable("peer ended the channel before answering", reason="CHANNEL_ENDED")
        frame = parse_frame(first, MAX_OPEN_BYTES + 1024)
        if frame.WhichOneof("kind") == "close":
            return close_error(frame.close)
        content = verify_open(
            read_open(first),
            my_id=hub.node_id,
            keyring=hub.keyring,
            replay=hub.replay,
            # This very dial verified the peer's card in its handshake.
            is_verified=lambda node_id: node_id == peer.peer_id,
            expected_sender=peer.peer_id,
            answer_to=sent.nonce,
        )
        write = stream_write(call.write)
        link = establish(hub, peer, content, sent, params, write, dialler=hub.node_id)
    finally:
        peer.open_sent = False
    if isinstance(link, AralError):
        # A link the peer dialled won meanwhile; tell the peer (sealed: the session
        # keys exist) and leave the live link alone.
        seal = frame_keys(sent, content, dialler=True)
        superseded = Unavailable("superseded", reason="CHANNEL_SUPERSEDED")
        await write(sealed_close(seal, superseded))
    return link


async def _frames(call: Any) -> AsyncIterator[bytes]:
    """A dialled stream's frames; its failure as the ``AralError`` its status says."""
    while True:
        try:
            data = await call.read()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        if data is _EOF:
            return
        yield data


__all__ = ["CHANNEL_METHOD", "ChannelStreams", "dial_forever", "serve", "stream_write"]
