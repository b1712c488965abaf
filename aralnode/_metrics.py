"""Prometheus metrics of a node, served at ``/metrics`` on its HTTP port
(docs/observability.md).

Two sources, so that the hot path pays almost nothing:

- **Calls** are counted by an audit sink (``CallMetrics``): the pipeline's audit
  stage hands every call's and every message's outcome to its sinks, on every
  door, so these counters see exactly what the audit log sees -- door,
  capability, outcome, governance decision, flags, duration -- with no door of
  its own to forget. One dict lookup and a counter increment per call, plus a
  histogram observation for timed calls.
- **Everything else** is read when scraped (``NodeCollector``): the node's
  counters (``pipeline.counters``: rate-limit refusals, channel batches, acks,
  resends, handshakes, ...), peers by state, calls in flight, the channels'
  outbox depth, the audit log's pending records and write lag.

Label values are bounded: doors, outcomes (error codes), decisions and peer states
are closed sets; a capability label is the capability's id for the first
``MAX_CAPABILITY_LABELS`` seen, "other" after that, and "unknown" for an id that
was not found (a caller's made-up ids cannot grow the series without bound). No
trace, caller or peer id is ever a label. Each node has its own
``CollectorRegistry`` (several nodes in a process never mix their figures).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from aralnode._logs import get_logger
from aralnode.core.audit import AuditRecord
from aralnode.core.peers import PeerState

if TYPE_CHECKING:
    from aralnode._governance import Governance
    from aralnode.config import NodeConfig
    from aralnode.core.peers import PeerTable
    from aralnode.mesh.hub import ChannelHub
    from aralnode.service.pipeline import Pipeline


class Node(Protocol):
    """What the metrics read of a node (``aralnode.node.Node``)."""

    config: NodeConfig
    pipeline: Pipeline
    peer_table: PeerTable
    governing: Governance

    @property
    def channels(self) -> ChannelHub | None: ...


log = get_logger("aralnode.metrics")

#: Distinct capability labels kept; later ones count as "other".
MAX_CAPABILITY_LABELS = 1024
#: Seconds: from a cached call (~0.2 ms) to a slow tool or an approval wait.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# pipeline.counters key -> (family, label value): the well-known ones get families
# of their own; every key is also in aralnode_events_total.
_RATE_LIMIT_KEYS = {
    "invoke.rejected": "concurrency",
    "invoke.rejected_caller": "caller_concurrency",
}
_CHANNEL_COUNTERS = {
    "channel.sent": ("aralnode_channel_messages", "sent"),
    "channel.received": ("aralnode_channel_messages", "received"),
    "channel.batches": ("aralnode_channel_batches", ""),
    "channel.acked": ("aralnode_channel_acks", ""),
    "channel.resent": ("aralnode_channel_resends", ""),
}
_HANDSHAKE_KEYS = {
    "handshake.accepted": "accepted",
    "handshake.rejected": "rejected",
    "discovery.handshake_rejected": "rejected_outbound",
    "discovery.dial_failed": "dial_failed",
}


class CallMetrics(Collector):
    """The audit sink that counts calls and messages (see the module docstring),
    and the collector that shows them. Plain integers and bucket lists on the event
    loop, turned into metric families only when scraped: a ``prometheus_client``
    counter or histogram takes a lock per update, which every call would pay.
    Never raises: a sink that raises fails the call, and metrics must not."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._labels: set[str] = set()
        # (door, capability label, direction, outcome) -> calls
        self.calls: dict[tuple[str, str, str, str], int] = {}
        # raw (door, action, direction, outcome) -> its labels' key, resolved once
        self._keys: dict[tuple[str, str, str, str], tuple[str, str, str, str]] = {}
        # (door, capability label) -> [count, sum of seconds, per-bucket counts...,
        # count past the last bucket]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.decisions: dict[str, int] = {}
        self.flags = 0
        if registry is not None:
            registry.register(self)

    def _capability(self, action: str, outcome: str = "") -> str:
        if outcome == "not_found":  # a made-up id: never a label of its own
            return "unknown"
        if action in self._labels:
            return action
        if len(self._labels) < MAX_CAPABILITY_LABELS:
            self._labels.add(action)
            return action
        return "other"

    def write(self, record: AuditRecord) -> None:
        try:
            self._count(record)
        except Exception:  # a metric is never worth a call
            log.exception("metrics: counting a call failed")

    def _count(self, record: AuditRecord) -> None:
        raw = (record.door, record.action, record.direction, record.outcome)
        key = self._keys.get(raw)
        if key is None:
            key = (raw[0], self._capability(raw[1], raw[3]), raw[2], raw[3])
            if len(self._keys) < 8 * MAX_CAPABILITY_LABELS:
                self._keys[raw] = key
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        if record.duration_ms:
            seconds = record.duration_ms / 1000.0
            timer = self.latency.get(key[:2])
            if timer is None:
                timer = self.latency[key[:2]] = [0.0] * (3 + len(LATENCY_BUCKETS))
            timer[0] += 1
            timer[1] += seconds
            # le buckets: the first bound >= seconds (the last slot: past every bound)
            timer[2 + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if decision := record.decision:
            self.decisions[decision] = self.decisions.get(decision, 0) + 1
        if record.flags:
            self.flags += 1

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "aralnode_calls",
            "Calls and messages by door, capability and outcome (ok or the error code).",
            labels=["door", "capability", "direction", "outcome"],
        )
        for key, count in list(self.calls.items()):
            calls.add_metric(list(key), count)
        yield calls
        latency = HistogramMetricFamily(
            "aralnode_call_duration_seconds",
            "Time from a call's start to its outcome, by door and capability.",
            labels=["door", "capability"],
        )
        for labels, timer in list(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(LATENCY_BUCKETS, timer[2:], strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", timer[0]))
            latency.add_metric(list(labels), buckets, sum_value=timer[1])
        yield latency
        decisions = CounterMetricFamily(
            "aralnode_governance_decisions",
            "Governance decisions by intervention (ok, nudge, escalate, block, halt).",
            labels=["decision"],
        )
        for decision, count in list(self.decisions.items()):
            decisions.add_metric([decision], count)
        yield decisions
        flags = CounterMetricFamily(
            "aralnode_governance_flags", "Calls a rule flagged (trust debt)."
        )
        flags.add_metric([], self.flags)
        yield flags


class NodeCollector(Collector):
    """What is read from the node when scraped (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:  # long: one family after another, flat
        node = self.node
        counters = dict(node.pipeline.counters)
        yield from _counter_families(counters)
        peers = GaugeMetricFamily("aralnode_peers", "Peers by state.", labels=["state"])
        by_state = dict.fromkeys(PeerState, 0)
        for peer in node.peer_table.snapshot():
            by_state[peer.state] += 1
        for state, count in by_state.items():
            peers.add_metric([state.name.lower()], count)
        yield peers
        in_flight = GaugeMetricFamily("aralnode_calls_in_flight", "Calls running now.")
        in_flight.add_metric([], node.pipeline.in_flight)
        yield in_flight
        hub = node.channels
        if hub is not None:
            depth = GaugeMetricFamily(
                "aralnode_channel_outbox_messages",
                "Messages in the channels' outboxes, not yet acknowledged by their peer.",
            )
            depth.add_metric([], sum(hub.outbox.count(p) for p in hub.outbox.peers()))
            yield depth
        yield from _audit_families(node)


def _counter_families(counters: dict[str, int]) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "aralnode_events",
        "Every event the node counts (the counters of GetStatus), by name.",
        labels=["event"],
    )
    refused = CounterMetricFamily(
        "aralnode_ratelimit_refusals", "Calls refused by a rate or concurrency limit.",
        labels=["limit"],
    )  # fmt: skip
    handshakes = CounterMetricFamily(
        "aralnode_handshakes", "Peer handshakes by result.", labels=["result"]
    )
    channel: dict[str, CounterMetricFamily] = {}
    for key, value in sorted(counters.items()):
        events.add_metric([key], value)
        if key.startswith("ratelimit.refused_"):
            refused.add_metric([key.removeprefix("ratelimit.refused_")], value)
        elif key in _RATE_LIMIT_KEYS:
            refused.add_metric([_RATE_LIMIT_KEYS[key]], value)
        elif key in _HANDSHAKE_KEYS:
            handshakes.add_metric([_HANDSHAKE_KEYS[key]], value)
        elif key in _CHANNEL_COUNTERS:
            name, label = _CHANNEL_COUNTERS[key]
            family = channel.get(name)
            if family is None:
                family = channel[name] = CounterMetricFamily(
                    name, f"Channel {name.rsplit('_', 1)[1]}.",
                    labels=["direction"] if label else None,
                )  # fmt: skip
            family.add_metric([label] if label else [], value)
    yield events
    yield refused
    yield handshakes
    yield from channel.values()


def _audit_families(node: Node) -> Iterator[Metric]:
    store = node.governing.audit_log
    if store is None:
        return
    durable = node.pipeline.stages.audit.log
    pending = GaugeMetricFamily(
        "aralnode_audit_pending_records", "Audit records waiting to be committed."
    )
    pending.add_metric([], store.pending)
    yield pending
    written = CounterMetricFamily("aralnode_audit_records", "Audit records committed.")
    written.add_metric([], store.records)
    yield written
    commits = CounterMetricFamily("aralnode_audit_commits", "Audit log commits (groups).")
    commits.add_metric([], store.commits)
    yield commits
    failed = GaugeMetricFamily(
        "aralnode_audit_failed", "1 while the audit log cannot be written (calls are refused)."
    )
    failed.add_metric([], 1 if store.failed is not None else 0)
    yield failed
    lag = getattr(durable, "lag", None)
    if lag is not None:
        total, groups = lag
        yield SummaryMetricFamily(
            "aralnode_audit_write_lag_seconds",
            "From a group's first record to its commit, of groups a call waited for.",
            count_value=groups,
            sum_value=total,
        )


class NodeMetrics:
    """A node's registry: ``CallMetrics`` (installed as an audit sink) and the
    scrape-time ``NodeCollector``; ``render`` is what ``/metrics`` serves."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallMetrics(self.registry)
        self.registry.register(NodeCollector(node))
        node.pipeline.stages.audit.sinks.append(self.calls)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def attach_metrics(node: Node) -> Callable[[], tuple[bytes, str]] | None:
    """The ``/metrics`` body maker of ``node``, its sink installed (None: metrics off)."""
    if not node.config.metrics:
        return None
    return NodeMetrics(node).render


__all__ = ["MAX_CAPABILITY_LABELS", "CallMetrics", "NodeCollector", "NodeMetrics", "attach_metrics"]
