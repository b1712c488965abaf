"""Which stream becomes a peer's channel: opens answered, links decided and attached.

Both ends may dial at once, and a peer that lost a link dials again: every new,
verified stream is decided here before it may change anything (``refusal``), and
only then resumes the channel's state and is attached as the peer's link
(``establish``). ``aralnode.mesh.streams`` calls these with the hub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core.channel import ChannelSession, OpenParams, SentOpen, frame_keys, make_open
from aralnode.core.errors import AralError, Unavailable
from aralnode.mesh.hub import ChannelHub
from aralnode.mesh.link import Link
from aralnode.mesh.state import PeerChannel

log = get_logger("aralnode.channel")


def open_params(hub: ChannelHub, pc: PeerChannel) -> OpenParams:
    """What our open states to ``pc``. No side effect."""
    s = hub.settings
    return OpenParams(
        epoch=hub.outbox.epoch,
        incarnation=hub.incarnation,
        resume=pc.inbound.snapshot(),
        window=s.window,
        keepalive_ms=s.keepalive_ms,
        max_batch=s.max_batch,
        first_unacked=hub.outbox.first_unacked(pc.peer_id),
    )


def refusal(hub: ChannelHub, pc: PeerChannel, dialler: str) -> AralError | None:
    """Why a new link dialled by ``dialler`` may not become the peer's channel,
    or ``None``. No side effect.

    Of two live links dialled from opposite ends, the lower node id's dial
    wins; a newer link from the same end replaces the older (its dialler knows
    the old one died). An incoming open is also refused while our own winning
    open is on the wire -- only once it was sent: until then (a handshake may
    take up to ``open_timeout``) the peer's dial is as good as ours.
    """
    if hub.stopping:
        return Unavailable("node is stopping", reason="NODE_STOPPING")
    winner = min(hub.node_id, pc.peer_id)
    old = pc.link
    if old is not None and old.alive and dialler not in (old.dialler, winner):
        return Unavailable("a channel to this peer is already open", reason="DUPLICATE_CHANNEL")
    if dialler == pc.peer_id and pc.open_sent and not pc.connected and winner == hub.node_id:
        return Unavailable("this node's own channel to you wins", reason="DUPLICATE_CHANNEL")
    return None


def accept_link(
    hub: ChannelHub,
    pc: PeerChannel,
    content: pb.ChannelOpenContent,
    write: Callable[[bytes], Awaitable[None]],
) -> tuple[Link, bytes] | AralError:
    """An incoming verified open: decide first, then answer and attach. Returns
    the link and our answer frame (to write before anything else), or why not."""
    why_not = refusal(hub, pc, pc.peer_id)
    if why_not is not None:
        return why_not
    pc.inbound.start(content.session_epoch, content.first_unacked)
    params = open_params(hub, pc)
    answer = make_open(
        hub.identity,
        recipient=pc.peer_id,
        clock=hub.clock,
        params=params,
        answer_to=content.nonce,
    )
    link = establish(hub, pc, content, answer, params, write, dialler=pc.peer_id)
    return (link, answer.frame) if isinstance(link, Link) else link


def establish(  # noqa: PLR0917 - the two opens and what each end sent
    hub: ChannelHub,
    pc: PeerChannel,
    content: pb.ChannelOpenContent,
    sent: SentOpen,
    params: OpenParams,
    write: Callable[[bytes], Awaitable[None]],
    *,
    dialler: str,
) -> Link | AralError:
    """Both opens are verified: decide whether the link may be the peer's
    channel, and only then let it change anything (receive marks, acks,
    pending requests) and attach it. Synchronous: nothing can intervene
    between the decision and the attach.

    Raises:
        Unauthenticated: the peer's ephemeral key is unusable.
    """
    why_not = refusal(hub, pc, dialler)
    if why_not is not None:
        return why_not
    session = ChannelSession(
        peer_open=content,
        params=params,
        inbound=pc.inbound,
        seal=frame_keys(sent, content, dialler=dialler == hub.node_id),
        clock=hub.clock,
        timeout_ms=hub.settings.timeout_ms,
        max_frame_bytes=hub.max_message_bytes + 64 * 1024,
        sent_limit=max(pc.sent_max, pc.sent_before_start),
    )
    # Decided: from here on the link is the peer's channel.
    _resume(hub, pc, content, params, session)
    link = Link(hub, pc, session, write, dialler=dialler)
    old = pc.link
    if old is not None and old.alive:
        old.close(Unavailable("superseded by a newer channel", reason="CHANNEL_SUPERSEDED"))
    pc.link = link
    pc.links_opened += 1
    pc._set_up(True)
    hub.count("channel.opened")
    for listener in hub.link_listeners:
        listener(pc.peer_id, True)
    link.wake.set()
    return link


def _resume(
    hub: ChannelHub,
    pc: PeerChannel,
    content: pb.ChannelOpenContent,
    params: OpenParams,
    session: ChannelSession,
) -> None:
    """What a new channel changes: the receive marks, what the peer acked, and the
    requests a restarted peer can no longer answer."""
    pc.inbound.resumed(params.resume)
    pc.inbound.start(content.session_epoch, content.first_unacked)
    if session.resume_clamped:
        hub.count("channel.resume_clamped")
        log.warning(
            "peer %s resumes after seq %d, beyond the last we sent (%d)",
            pc.peer_id,
            content.resume_after,
            session.peer_acked,
        )
    if pc.incarnation and content.incarnation != pc.incarnation:
        # Requests the old process acked died with it; unacked ones are resent.
        lost = [mid for mid, (_, seq) in pc.pending.items() if seq <= pc.peer_acked]
        for mid in lost:
            fut, _ = pc.pending.pop(mid)
            if not fut.done():
                fut.set_exception(
                    Unavailable(
                        f"peer {pc.peer_id} restarted while serving the request",
                        reason="PEER_RESTARTED",
                    )
                )
    pc.incarnation = content.incarnation
    hub.acked(pc, session.peer_acked)


__all__ = ["accept_link", "establish", "open_params", "refusal"]
