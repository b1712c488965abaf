"""Discovery: where other nodes might be, verified before use.

::

    backend.py     the backend interface: hints in, withdrawals out; Announcement
    mdns.py        the mDNS / DNS-SD backend (python-zeroconf), txt.py its TXT record
    static.py      configured host:port peers
    supervisor.py  one supervisor over every backend: dials, verifies, follows, expires
    liveness.py    grpc.health.v1 followers of verified peers
    addresses.py   advertised hosts, dial-back addresses
    events.py      peer changes as a bounded async iterator

Every hint, from any backend, is only "try a handshake here": a peer exists once
the supervisor's dial verified its key.
"""

from aralnode.discovery.addresses import (
    MAX_DIAL_ADDRESSES,
    advertised_hosts,
    dial_back_addresses,
    transport_host,
)
from aralnode.discovery.backend import Announcement, DiscoveryBackend, Hint, HintSink
from aralnode.discovery.events import PeerEventStream
from aralnode.discovery.static import StaticBackend
from aralnode.discovery.supervisor import DIALERS, MAX_DIAL_BACKLOG, MAX_HINT_KEYS, Supervisor

__all__ = [
    "DIALERS",
    "MAX_DIAL_ADDRESSES",
    "MAX_DIAL_BACKLOG",
    "MAX_HINT_KEYS",
    "Announcement",
    "DiscoveryBackend",
    "Hint",
    "HintSink",
    "PeerEventStream",
    "StaticBackend",
    "Supervisor",
    "advertised_hosts",
    "dial_back_addresses",
    "transport_host",
]
