"""Discovery without multicast: TXT parsing, and the driver fed by a fake mDNS on loopback.

Everything here runs on 127.0.0.1; the real multicast tests are in
``test_discovery_lan.py`` (network namespaces only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceStateChange

from aralnode import Identity, Node, NodeClient
from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.errors import PeerNotFound, RateLimited, Unavailable
from aralnode.core.handshake import build_card
from aralnode.core.peers import PeerChange, PeerEvent, PeerState
from aralnode.discovery import (
    DIALERS,
    MAX_DIAL_ADDRESSES,
    MAX_DIAL_BACKLOG,
    MAX_HINT_KEYS,
    Announcement,
    Hint,
    PeerEventStream,
    Supervisor,
    addresses,
    advertised_hosts,
    dial_back_addresses,
    transport_host,
)
from aralnode.discovery.addresses import origin
from aralnode.discovery.liveness import status_name
from aralnode.discovery.mdns import (
    MdnsBackend,
    MdnsBrowser,
    MdnsEvent,
    Rejection,
    Sighting,
    Withdrawal,
    instance_label,
    mdns_hosts,
)
from aralnode.discovery.txt import MAX_TXT_BYTES, BadAnnouncement, parse_txt, to_txt
from aralnode.transport.grpc_client import channel_options


def announcement_of(node: Node, **changes: object) -> Announcement:
    fields: dict[str, object] = {
        "node_id": node.node_id,
        "fingerprint": node.identity.public_key.fingerprint,
        "protocol_versions": ("1.0",),
        "grpc_port": node.grpc_port,
        "capability_digest": node.registry.digest,
        "hosts": tuple(node.advertised_hosts()),
    }
    fields.update(changes)
    return Announcement(**fields)  # type: ignore[arg-type]


# -- TXT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ES256", "Ed25519"])
def test_txt_round_trip_fits_the_budget(algorithm: str) -> None:
    ident = Identity.generate(algorithm)  # type: ignore[arg-type]
    a = Announcement(
        ident.node_id,
        ident.public_key.fingerprint,
        ("1.0", "0.9"),
        65535,
        "0123456789abcdef",
        65535,
    )
    raw = to_txt(a)
    assert len(raw) <= MAX_TXT_BYTES
    assert parse_txt(raw) == a
    # A node that serves A2A says where its Agent Card is; a bridged record (via=) is
    # another node's, whose card it does not announce: either fits the budget.
    for extra in ({"a2a_card": "/.well-known/agent-card.json"}, {"via": ident.node_id}):
        b = dataclasses.replace(a, **extra)  # type: ignore[arg-type]
        raw = to_txt(b)
        assert len(raw) <= MAX_TXT_BYTES
        assert parse_txt(raw) == b


def _txt(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


GOOD = Identity.generate()
GOOD_PAIRS = [
    b"txtvers=1",
    b"id=" + GOOD.node_id.encode(),
    b"fp=" + GOOD.public_key.fingerprint.encode(),
    b"pv=1.0",
    b"grpc=50051",
    b"cd=0123456789abcdef",
]


def test_keys_are_case_insensitive_and_first_wins() -> None:
    raw = _txt(*GOOD_PAIRS[:4], b"GRPC=50051", b"grpc=1", GOOD_PAIRS[5], b"future=ignored")
    assert parse_txt(raw).grpc_port == 50051


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_txt(b"x" * 250) * 2, "limit"),
        (b"\x40txtvers=1", "runs past"),
        (_txt(*GOOD_PAIRS[:5], b"cd=\xff\xfe"), "ASCII"),
        (_txt(b"txtvers=2", *GOOD_PAIRS[1:]), "txtvers"),
        (_txt(*GOOD_PAIRS[:2], b"fp=" + b"a" * 52, *GOOD_PAIRS[3:]), "derived"),
        (_txt(*GOOD_PAIRS[:4], b"grpc=0", GOOD_PAIRS[5]), "out of range"),
        (_txt(*GOOD_PAIRS[:4], b"grpc=99999999", GOOD_PAIRS[5]), "not a number"),
        (_txt(*GOOD_PAIRS[:3], b"pv=", *GOOD_PAIRS[4:]), "protocol versions"),
        (_txt(*GOOD_PAIRS[:5]), "digest"),
        (_txt(GOOD_PAIRS[0]), "node id"),
        (_txt(*GOOD_PAIRS, b"http=8080", b"a2a=http://elsewhere/card"), "Agent Card path"),
        (_txt(*GOOD_PAIRS, b"a2a=/.well-known/agent-card.json"), "Agent Card path"),
    ],
)
def test_bad_txt_is_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadAnnouncement, match=reason):
        parse_txt(raw)


@given(st.binary(max_size=600))
def test_parsing_any_bytes_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(BadAnnouncement):
        parse_txt(raw)


@given(st.lists(st.binary(max_size=60), max_size=8))
def test_parsing_any_well_framed_strings_never_raises_anything_else(strings: list[bytes]) -> None:
    with contextlib.suppress(BadAnnouncement):
        parse_txt(_txt(*GOOD_PAIRS[:3], *strings))


def test_instance_label_is_unique_per_key_and_short() -> None:
    label = instance_label("n" * 63, GOOD.node_id)
    assert len(label.encode()) <= 63
    assert label.endswith(GOOD.node_id[:8])


# -- the driver, fed by a fake mDNS ----------------------------------------------------------


class FakeMdns:
    """Stands in for ``MdnsService``: records announcements, lets the test inject events."""

    def __init__(self) -> None:
        self.announced: list[Announcement] = []
        self.updated = asyncio.Event()
        self.on_event: Callable[[MdnsEvent], None] | None = None
        self.closed = False

    async def start(
        self, announcement: Announcement, on_event: Callable[[MdnsEvent], None]
    ) -> None:
        self.announced.append(announcement)
        self.on_event = on_event

    async def update(self, announcement: Announcement) -> None:
        self.announced.append(announcement)
        self.updated.set()

    async def close(self) -> None:
        self.closed = True

    def see(
        self,
        target: Node,
        *,
        instance: str = "",
        hosts: tuple[str, ...] = ("127.0.0.1",),
        **changes: object,
    ) -> None:
        a = announcement_of(target, **changes)
        assert self.on_event is not None
        self.on_event(
            Sighting(instance or f"{target.name}._aral._tcp.local.", hosts, a.grpc_port, a)
        )

    def bye(self, target: Node, instance: str = "") -> None:
        assert self.on_event is not None
        self.on_event(Withdrawal(instance or f"{target.name}._aral._tcp.local."))


def observed(make_node: Callable[..., Node], name: str, **cfg: object) -> tuple[Node, FakeMdns]:
    """A node whose mDNS backend drives ``FakeMdns`` instead of the network."""
    fake = FakeMdns()
    backend = MdnsBackend(label=name, host_label=name, port=fake)
    return make_node(name, discovery="mdns", backends=[backend], **cfg), fake


async def until(node: Node, predicate: Callable[[], object], timeout: float = 15) -> None:
    """Wait on the node's peer events until ``predicate()`` holds."""
    async with asyncio.timeout(timeout), node.peer_events() as events:
        if predicate():
            return
        async for _ in events:
            if predicate():
                return


async def eventually(predicate: Callable[[], object], timeout: float = 15) -> None:
    """Poll a condition that no event announces (a counter), within a deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing signals a counter change
            await asyncio.sleep(0.01)  # a poll interval in a bounded wait (noqa: sleep-ok)


def state_of(node: Node, peer: Node) -> PeerState | None:
    info = node.peer_table.get(peer.node_id)
    return info.state if info is not None else None


async def test_sighting_leads_to_a_verified_peer_with_capabilities(
    make_node: Callable[..., Node],
) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        assert fake.announced[0] == announcement_of(a)
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        peer = a.peer_table.get(b.node_id)
        assert peer is not None
        assert peer.source == "mdns"
        assert peer.key_fingerprint == b.identity.public_key.fingerprint
        assert set(peer.capability_ids) == {c.id for c in b.registry}
        fake.see(a)  # our own announcement is never dialled
        assert a.peer_table.get(f"addr:127.0.0.1:{a.grpc_port}") is None


async def test_spoofed_id_or_fingerprint_is_rejected_and_the_real_peer_kept(
    make_node: Callable[..., Node],
) -> None:
    a, fake = observed(make_node, "a")
    b, liar = make_node("b"), make_node("liar")
    async with a, b, liar:
        counters = a.pipeline.counters
        # The liar announces b's id and fingerprint with its own key and address.
        fake.see(b, instance="liar-1._aral._tcp.local.", grpc_port=liar.grpc_port)
        await eventually(lambda: counters["discovery.handshake_rejected"] >= 1)
        # A TXT with b's id but another fingerprint, pointing at the real b.
        wrong_fp = b.node_id + liar.identity.public_key.fingerprint[32:]
        fake.see(b, instance="liar-2._aral._tcp.local.", fingerprint=wrong_fp)
        await eventually(lambda: counters["discovery.handshake_rejected"] >= 2)
        assert state_of(a, b) is None
        assert state_of(a, liar) is None
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        # Once b is verified, a lie about it is not even dialled.
        fake.see(b, instance="liar-3._aral._tcp.local.", grpc_port=liar.grpc_port)
        assert counters["discovery.handshake_rejected"] == 2
        assert state_of(a, b) is PeerState.CONNECTED
        assert a.peer_table.by_node_id(liar.node_id) is None
        assert a.connector.clients[b.node_id].address == b.address


async def test_forged_goodbye_does_not_evict_a_live_peer(make_node: Callable[..., Node]) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        fake.bye(b)
        await eventually(lambda: a.pipeline.counters["discovery.goodbye_refuted"] == 1)
        assert state_of(a, b) is PeerState.CONNECTED
        fake.bye(b, "never-seen._aral._tcp.local.")  # unknown instance: nothing happens


async def test_graceful_stop_is_dropped_at_once(make_node: Callable[..., Node]) -> None:
    # A long peer timeout: expiry cannot be what drops it.
    a, fake = observed(make_node, "a", peer_timeout_ms=60_000)
    b = make_node("b")
    async with a:
        await b.start()
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        # What b.stop() does first (idempotent), made explicit so the goodbye below
        # surely follows it, as the real MdnsService's does.
        await b.parts.grpc.health.enter_graceful_shutdown()
        stopping = asyncio.ensure_future(b.stop(grace=1))
        # The Watch's NOT_SERVING or the goodbye's re-check drops b, whichever is first.
        fake.bye(b)
        await until(a, lambda: state_of(a, b) is PeerState.GONE)
        gone = a.peer_table.get(b.node_id)
        assert gone is not None
        assert gone.health != "SERVING"
        await stopping
        assert b.node_id not in a.connector.clients


async def test_dead_peer_expires_after_keepalive_and_timeout(
    make_node: Callable[..., Node],
) -> None:
    a, fake = observed(make_node, "a", keepalive_ms=100, peer_timeout_ms=400)
    b = make_node("b")
    async with a:
        await b.start()
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        await b.stop(grace=0)  # no goodbye reaches a: only health tells
        await until(a, lambda: state_of(a, b) is PeerState.GONE)
        gone = a.peer_table.get(b.node_id)
        assert gone is not None
        assert gone.error


async def test_flood_of_sightings_stays_bounded(make_node: Callable[..., Node]) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        assert fake.on_event is not None
        for i in range(2000):
            ident = Identity.generate()
            bogus = Announcement(ident.node_id, ident.public_key.fingerprint, ("1.0",), 1, "0" * 16)
            # Distinct closed ports: the backlog is keyed by address.
            fake.on_event(Sighting(f"bogus-{i}._aral._tcp.local.", ("127.0.0.1",), 2 + i, bogus))
            fake.on_event(Rejection(f"junk-{i}._aral._tcp.local.", "bad TXT"))
            fake.on_event(Withdrawal(f"gone-{i}._aral._tcp.local."))
            d = a.discovery
            assert len(d._dials) <= MAX_DIAL_BACKLOG
            assert len(d._claims) <= MAX_HINT_KEYS
        counters = a.pipeline.counters
        assert counters["discovery.dial_dropped"] >= 2000 - MAX_DIAL_BACKLOG - 8
        assert counters["discovery.announcement_rejected"] == 2000
        await eventually(lambda: not a.discovery._dials and not a.discovery._dialing, timeout=60)
        assert a.peer_table.pending() == 0
        assert state_of(a, b) is PeerState.CONNECTED
        assert len(a.peer_table) <= a.peer_table.capacity


async def test_capability_change_updates_txt_and_peers_refresh(
    make_node: Callable[..., Node],
) -> None:
    a, fake_a = observed(make_node, "a")
    b, fake_b = observed(make_node, "b")
    async with a, b:
        fake_a.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)

        @b.capability(id="extra.ping")  # type: ignore[untyped-decorator]
        async def ping() -> str:
            return "pong"

        await asyncio.wait_for(fake_b.updated.wait(), 10)
        assert fake_b.announced[-1].capability_digest == b.registry.digest
        fake_a.see(b)  # the new TXT, as a's browser would report it

        def has_ping() -> bool:
            peer = a.peer_table.get(b.node_id)
            return peer is not None and "extra.ping" in peer.capability_ids

        await until(a, has_ping)
        assert state_of(a, b) is PeerState.CONNECTED


async def test_static_peer_is_followed_and_dropped(make_node: Callable[..., Node]) -> None:
    b = make_node("b")
    await b.start()
    a = make_node("a", discovery="static", peers=[b.address], keepalive_ms=100, peer_timeout_ms=400)
    async with a:
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        await b.stop(grace=0)
        await until(a, lambda: state_of(a, b) is PeerState.GONE)


async def test_peer_event_stream_is_bounded_and_ends_on_stop(
    make_node: Callable[..., Node],
) -> None:
    a = make_node("a")
    listeners: list[Callable[[PeerChange], None]] = []

    def subscribe(fn: Callable[[PeerChange], None]) -> Callable[[], None]:
        listeners.append(fn)
        return lambda: listeners.remove(fn)

    stream = PeerEventStream(subscribe, maxsize=2)
    for i in range(5):
        a.peer_table.apply(f"k{i}", PeerEvent.DISCOVERED, address=f"h:{i}")
        listeners[0](PeerChange(PeerEvent.DISCOVERED, None, a.peer_table.get(f"k{i}")))  # type: ignore[arg-type]
    stream.close()
    assert [c.peer.key async for c in stream] == ["k3", "k4"]
    assert stream.dropped == 3
    assert listeners == []

    async with a:
        events = a.peer_events()
    assert [c async for c in events] == []  # the node stopped: the stream ended


async def test_cli_peers_watch_prints_changes(make_node: Callable[..., Node]) -> None:
    a, b = make_node("a"), make_node("b")
    async with a:
        await b.start()
        await a.connect(b.address)
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "aralnode"),
            "peers", "--node", a.address, "--watch", "--json", "--interval", "0.1",
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert proc.stdout is not None

        async def next_about_b() -> dict[str, object]:
            while True:
                line = json.loads(await proc.stdout.readline())  # type: ignore[union-attr]
                if line["peer"].get("node_id") == b.node_id:
                    return line  # type: ignore[no-any-return]

        try:
            async with asyncio.timeout(30):
                first = await next_about_b()
                assert first["change"] == "present"
                assert first["peer"]["state"] == "PEER_STATE_CONNECTED"  # type: ignore[index]
                await b.stop(grace=1)
                second = await next_about_b()
            assert second["change"] == "changed"
            assert second["peer"]["state"] in ("PEER_STATE_STALE", "PEER_STATE_GONE")  # type: ignore[index]
        finally:
            proc.terminate()
            await proc.wait()


# -- review fixes: unreached inbound peers, dial-back addresses, retries, bounds ------------


def bogus_card(ident: Identity, address: str) -> pb.SignedNodeCard:
    return build_card(
        ident,
        name="bogus",
        endpoints=[("grpc", address)],
        registry=CapabilityRegistry(),
        clock=SYSTEM_CLOCK,
    )


async def test_handshake_flood_fills_neither_table_nor_key_ring(
    make_node: Callable[..., Node],
) -> None:
    # Self-made keys that complete a handshake and list an unreachable address.
    a, fake = observed(make_node, "a", keepalive_ms=100, peer_timeout_ms=400)
    b = make_node("b")
    async with a, b:
        table = a.peer_table
        table.capacity = 20  # below the flood, above the unreached cap
        table.max_inbound = 8
        # Nothing expires during the flood, however slow the machine: every slot the
        # cap gives is taken, and every handshake after that is refused.
        short = table.timeouts
        table.timeouts = replace(short, stale_ms=3_600_000, pending_ms=3_600_000)
        refused: list[str] = []
        for _ in range(30):
            ident = Identity.generate()
            async with NodeClient(a.address, identity=ident) as client:
                try:
                    await client.handshake(bogus_card(ident, "127.0.0.1:1"))
                except RateLimited as exc:
                    refused.append(exc.reason)
        assert refused == ["TOO_MANY_PEERS_FROM_ADDRESS"] * (30 - table.max_inbound)
        assert table.connected() == []  # none of them is CONNECTED
        assert table.unreached() == table.max_inbound
        assert a.keyring.pinned == table.max_inbound  # the refused left no key behind
        # A real newcomer still gets in.
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        # Unreachable and silent, the unreached ones expire.
        table.timeouts = short
        await until(a, lambda: table.unreached() == 0)
        assert state_of(a, b) is PeerState.CONNECTED


async def test_inbound_only_peer_that_dies_is_dropped(make_node: Callable[..., Node]) -> None:
    # "none": a never dials b back; only b's channel keeps it listed.
    a = make_node("a", keepalive_ms=100, peer_timeout_ms=400)
    b = make_node("b")
    async with a:
        await b.start()
        await b.connect(a.address)
        peer = a.peer_table.get(b.node_id)
        assert peer is not None
        assert (peer.state, peer.reached) == (PeerState.STALE, False)
        await b.stop(grace=0)
        await until(a, lambda: state_of(a, b) is PeerState.GONE)


async def test_an_inbound_only_peers_capabilities_are_listed(
    make_node: Callable[..., Node],
) -> None:
    # "none": a never dials b back, yet calls to b already go over b's channel; its
    # capabilities come from the card b showed in its handshake, until b is forgotten.
    a = make_node("a", keepalive_ms=100, peer_timeout_ms=400)
    b = make_node("b")
    async with a:
        await b.start()
        await b.connect(a.address)
        async with NodeClient(a.address) as client:
            listed = await client.capabilities(b.node_id)
            assert {c.id for c in listed.capabilities} == {c.id for c in b.registry}
            await b.stop(grace=0)
            await until(a, lambda: state_of(a, b) is PeerState.GONE)
            a.peer_table.remove(b.node_id)  # forgotten: its card goes with it
            with pytest.raises(PeerNotFound):
                await client.capabilities(b.node_id)


async def test_a_second_dial_to_an_address_in_handshake_is_a_clean_refusal(
    make_node: Callable[..., Node],
) -> None:
    """Two dials to one address can overlap (a static peer's redial, discovery, a
    user's connect). The second is refused with an AralError, which every dial loop
    handles; a bare ValueError from the peer table ended a static peer's redial loop
    without a word."""
    a, b = make_node("a"), make_node("b")
    async with a, b:
        first = asyncio.ensure_future(a.connect(b.address))
        key = f"addr:{b.address}"
        await until(
            a, lambda: (p := a.peer_table.get(key)) is not None and p.state is PeerState.HANDSHAKING
        )
        with pytest.raises(Unavailable) as info:
            await a.connect(b.address)
        assert info.value.reason == "DIAL_IN_PROGRESS"
        assert (await first).state is PeerState.CONNECTED


async def test_a_nodes_own_clients_take_its_message_limit(make_node: Callable[..., Node]) -> None:
    a, b = make_node("a", max_message_bytes=8 << 20), make_node("b")
    async with a, b:
        await a.connect(b.address)
        assert a.connector.clients[b.node_id].max_message_bytes == 8 << 20  # not the 4 MiB default


async def test_inbound_peer_is_dialled_back_and_followed(make_node: Callable[..., Node]) -> None:
    a = make_node("a", discovery="static", keepalive_ms=100, peer_timeout_ms=400)
    b = make_node("b")
    async with a, b:
        await b.connect(a.address)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        peer = a.peer_table.get(b.node_id)
        assert peer is not None
        assert peer.reached
        assert b.node_id in a.discovery.followers
        await b.stop(grace=0)
        await until(a, lambda: state_of(a, b) is PeerState.GONE)


@pytest.mark.parametrize("announced", ["before", "after"])
async def test_a_peer_that_dialled_first_is_the_backends_once_it_announces_itself(
    make_node: Callable[..., Node], announced: str
) -> None:
    """b dials a before a's backend sees b's announcement (or while a dials b back):
    once connected and announced at the address a reached, b is that backend's peer,
    as if a had dialled first (an etcd bridge writes only its LAN's mDNS peers)."""
    a = make_node("a", discovery="static", keepalive_ms=100)
    b = make_node("b")
    async with a, b:
        assert isinstance(a.discovery, Supervisor)
        hint = Hint(f"mdns:{b.node_id}", (b.address,), b.node_id, source="mdns")
        await b.connect(a.address)
        if announced == "after":
            await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
            peer = a.peer_table.get(b.node_id)
            assert peer is not None
            assert peer.source == "inbound"
        a.discovery.hint(hint)
        await until(
            a,
            lambda: (
                (p := a.peer_table.get(b.node_id)) is not None
                and (p.state, p.source, p.reached) == (PeerState.CONNECTED, "mdns", True)
            ),
        )
        # An announcement at another address makes no peer of it.
        c = make_node("c")
        async with c:
            await c.connect(a.address)
            await until(a, lambda: state_of(a, c) is PeerState.CONNECTED)
            a.discovery.hint(Hint(f"mdns:{c.node_id}", ("10.9.9.9:1",), c.node_id, source="mdns"))
            peer = a.peer_table.get(c.node_id)
            assert peer is not None
            assert peer.source == "inbound"


def test_dial_back_goes_to_the_transport_ip_at_the_card_ports() -> None:
    assert transport_host("ipv4:10.77.0.3:41000") == "10.77.0.3"
    assert transport_host("ipv6:%5B::1%5D:41000") == "::1"
    assert transport_host("unix:/tmp/x") == ""
    seen = "ipv4:10.77.0.3:41000"
    assert dial_back_addresses(["127.0.0.1:50051"], seen) == ["10.77.0.3:50051"]
    assert dial_back_addresses(["0.0.0.0:50051"], seen) == ["10.77.0.3:50051"]
    # The card's hosts are never dialled (a self-signed card could name any host):
    # only its ports, at the connection's IP; bounded.
    card = ["172.17.0.1:50051", "10.77.0.3:50051", *(f"10.9.0.{i}:{i + 1}" for i in range(9))]
    got = dial_back_addresses(card, seen)
    assert got == ["10.77.0.3:50051", "10.77.0.3:1", "10.77.0.3:2", "10.77.0.3:3"]
    assert len(got) == MAX_DIAL_ADDRESSES
    assert dial_back_addresses(["10.9.9.9:7"], seen) == ["10.77.0.3:7"]
    assert dial_back_addresses(["[::1]:7"], "ipv6:%5B::1%5D:9") == ["[::1]:7"]
    assert dial_back_addresses(["127.0.0.1:7"], "ipv4:127.0.0.1:9") == ["127.0.0.1:7"]
    assert dial_back_addresses(["junk", "h:99999"], seen) == []
    # No IP to go back to (a Unix socket): nobody is dialled.
    assert dial_back_addresses(["10.9.9.9:7"], "unix:/tmp/x") == []


def test_origin_groups_an_ipv6_host_s_addresses() -> None:
    assert origin("ipv4:10.77.0.3:41000") == "10.77.0.3"
    assert origin("ipv6:%5B2001:db8:1:2:a::1%5D:9") == "2001:db8:1:2::/64"
    assert origin("ipv6:[2001:db8:1:2:ffff::7]:9") == "2001:db8:1:2::/64"
    assert origin("ipv6:[::ffff:10.0.0.1]:9") == "10.0.0.1"
    assert origin("unix:/tmp/x") == ""


def test_wildcard_bind_advertises_real_addresses(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addresses, "lan_addresses", lambda ipv6=False: ["10.0.0.5", "172.17.0.1"])
    node = make_node("w", host="0.0.0.0", http_port=8080)
    node.grpc_port, node.http_port = 50051, 8080
    assert node.address == "10.0.0.5:50051"
    assert node._endpoints() == [
        ("grpc", "10.0.0.5:50051"),
        ("grpc", "172.17.0.1:50051"),
        ("http", "10.0.0.5:8080"),
        ("http", "172.17.0.1:8080"),
    ]
    chosen = make_node("i", host="0.0.0.0", interfaces=["10.0.0.5"])
    chosen.grpc_port = 50051
    assert chosen._endpoints() == [("grpc", "10.0.0.5:50051")]
    assert mdns_hosts(chosen.advertised_hosts()) == ["10.0.0.5"]  # announced: only the chosen one
    bound = make_node("b", host="10.0.0.7", interfaces=["10.0.0.5"])
    assert advertised_hosts(bound.config.bind_host, bound.config.interfaces) == ["10.0.0.7"]


async def test_every_announced_address_is_tried(make_node: Callable[..., Node]) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        # Nothing listens on 127.0.0.3 (b is bound to 127.0.0.1): the first fails.
        fake.see(b, hosts=("127.0.0.3", "127.0.0.1"))
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        assert a.pipeline.counters["discovery.dial_failed"] >= 1
        assert a.connector.clients[b.node_id].address == b.address


async def test_dialers_survive_unexpected_exceptions(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        real = a.connector.connect
        failures = DIALERS * 2  # enough to kill every dialer if they died

        async def flaky(address: str, **kw: Any) -> Any:
            nonlocal failures
            if failures:
                failures -= 1
                raise RuntimeError("boom")
            return await real(address, **kw)

        monkeypatch.setattr(a.connector, "connect", flaky)
        for i in range(DIALERS * 2):
            fake.see(b, instance=f"b-{i}._aral._tcp.local.", hosts=(f"127.0.0.{i + 10}",))
        await eventually(lambda: a.pipeline.counters["discovery.dial_error"] == DIALERS * 2)
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)


async def test_unknown_health_is_unhealthy_not_a_goodbye(make_node: Callable[..., Node]) -> None:
    assert status_name(health_pb2.HealthCheckResponse.SERVICE_UNKNOWN) == "SERVICE_UNKNOWN"
    assert status_name(health_pb2.HealthCheckResponse.UNKNOWN) == "UNKNOWN"
    a, fake = observed(make_node, "a", peer_timeout_ms=60_000)
    b = make_node("b")
    async with a, b:
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        status = status_name(health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        a.discovery._report(b.node_id, status, "")
        assert state_of(a, b) is PeerState.STALE  # kept, not used; not dropped
        assert b.node_id in a.connector.clients


async def test_refuted_goodbye_respects_the_instance_bound(make_node: Callable[..., Node]) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        assert fake.on_event is not None
        fake.bye(b)  # the re-check runs after the flood below
        for i in range(MAX_HINT_KEYS):
            ident = Identity.generate()
            bogus = Announcement(ident.node_id, ident.public_key.fingerprint, ("1.0",), 1, "0" * 16)
            fake.on_event(Sighting(f"x-{i}._aral._tcp.local.", ("127.0.0.1",), 1, bogus))
        await eventually(lambda: a.pipeline.counters["discovery.goodbye_refuted"] == 1)
        assert len(a.discovery._claims) <= MAX_HINT_KEYS
        assert state_of(a, b) is PeerState.CONNECTED


async def test_forgotten_peer_key_is_unpinned(make_node: Callable[..., Node]) -> None:
    a = make_node("a")
    b = make_node("b")
    async with a, b:
        await a.connect(b.address)
        assert a.keyring.is_pinned(b.node_id)
        a.discovery._drop(b.node_id, PeerEvent.GOODBYE, "test")
        assert a.keyring.is_pinned(b.node_id)  # GONE, still listed
        a.peer_table.timeouts = replace(a.peer_table.timeouts, forget_ms=0)
        a.discovery.sweep()
        assert a.peer_table.get(b.node_id) is None
        assert not a.keyring.is_pinned(b.node_id)


class _Info:
    """What ``MdnsBrowser`` needs of an AsyncZeroconf in these tests: nothing."""

    zeroconf = None


async def test_browser_re_resolves_missed_names_with_backoff() -> None:
    events: list[MdnsEvent] = []
    settled: set[str] = set()
    browser = MdnsBrowser(
        _Info(),  # type: ignore[arg-type]
        events.append,
        max_backlog=1,
        settled=settled.__contains__,
    )
    ident = Identity.generate()
    good = Announcement(ident.node_id, ident.public_key.fingerprint, ("1.0",), 7, "0" * 16)
    answers: dict[str, list[MdnsEvent]] = {
        "a": [Rejection("a", "unresolved", retry=True), Sighting("a", ("10.0.0.1",), 7, good)],
        "b": [Sighting("b", ("10.0.0.2",), 7, good)],
        "bad": [Rejection("bad", "txtvers")],
    }

    async def resolve(name: str) -> MdnsEvent:
        return answers[name].pop(0)

    browser._resolve = resolve  # type: ignore[method-assign]
    added = ServiceStateChange.Added
    browser._changed(name="a", state_change=added)
    await browser.resolve_next()  # unresolved
    browser._changed(name="bad", state_change=added)
    await browser.resolve_next()  # malformed: not retried
    browser._changed(name="b", state_change=added)
    browser._changed(name="a", state_change=ServiceStateChange.Updated)  # pushes b out
    assert browser.dropped == 1
    await browser.resolve_next()  # a, now resolved
    now = asyncio.get_running_loop().time()
    assert browser.requeue_due(now + 60) == 2  # b (dropped) and a (not settled)
    assert browser.dropped == 2  # the backlog holds one: b waits for the next pass
    settled.add("a")
    assert browser.requeue_due(now + 120) == 1  # b; a is settled, bad is hopeless
    await browser.resolve_next()
    assert [type(e).__name__ for e in events] == ["Rejection", "Rejection", "Sighting", "Sighting"]
    settled.add("b")
    assert browser.requeue_due(now + 600) == 0
    browser._changed(name="b", state_change=ServiceStateChange.Removed)
    assert browser.known == 2


async def test_discovery_settles_only_connected_instances(make_node: Callable[..., Node]) -> None:
    a, fake = observed(make_node, "a")
    b = make_node("b")
    async with a, b:
        instance = f"{b.name}._aral._tcp.local."
        assert not a.discovery.settled(instance)  # never seen
        fake.see(b, grpc_port=1)  # wrong port: its dial fails
        await eventually(lambda: a.pipeline.counters["discovery.dial_failed"] >= 1)
        assert not a.discovery.settled(instance)  # the browser will ask again
        fake.see(b)
        await until(a, lambda: state_of(a, b) is PeerState.CONNECTED)
        assert a.discovery.settled(instance)


def test_client_channels_keep_alive_within_the_servers_ping_policy() -> None:
    options = dict(channel_options())
    assert options["grpc.keepalive_time_ms"] >= 2000  # the server permits every >= 1 s
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert dict(channel_options(keepalive_ms=100))["grpc.keepalive_time_ms"] == 2000


async def test_an_unreachable_static_peer_is_a_warning(make_node: Callable[..., Node]) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    said: asyncio.Queue[logging.LogRecord] = asyncio.Queue()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(f"static peer {address}:"):
                said.put_nowait(record)

    handler = Catch()
    logging.getLogger("aralnode").addHandler(handler)
    try:
        async with make_node("a", discovery="static", peers=[address]):
            async with asyncio.timeout(15):
                first = await said.get()
        # Seen by default (warnings are), saying which peer and why.
        assert first.levelno == logging.WARNING
        assert "retrying" in first.getMessage()
    finally:
        logging.getLogger("aralnode").removeHandler(handler)
