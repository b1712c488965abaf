"""Unary Invoke: bare grpc.aio echo vs node Invoke (unsigned, signed ES256), same run;
and a user's proto method (the library example's GetBook) served by the node vs the
same servicer on a plain grpc.aio server with no node.

Servers in child processes, clients here, one grpc.aio channel per case, N calls in
flight. The bare echo server answers the same InvokeRequest/InvokeResponse messages
with no processing at all.

Pairing. A shared machine drifts by ten per cent and more within seconds, so cases
measured a few seconds apart differ by more than what is measured. Every case keeps
its channel (and the node cases their client) open for the whole run, and the run is
many short rounds: in each, every case runs for ``SLICE`` seconds, a case next to the
reference it is compared with, and every other round in the reverse order (so drift
hits the case before and after its reference alike). A ratio is the median over
rounds of the ratio within a round.

Each case also records the CPU time it cost per call, client and server together
(all threads). At 16 in flight the cores are nearly saturated, so QPS follows CPU per call, and
the ratios can be read as CPU: adding only the four ES256 operations a signed call
needs (sign and verify, request and response) to a bare call bounds what any
signed implementation can reach on the machine the bench runs on.

That bound is also measured, not only computed: the ``bare_signed`` reference case
is the bare echo with those four operations and nothing else (the client signs
each request and verifies each response, the server verifies and signs). No signed
Invoke can do less, so its ratio is the most a signed Invoke could reach here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from aralnode import _proto as pb
from aralnode._assembly import import_spec
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import REQUEST, build_content, open_message, seal, seal_into
from aralnode.core.handshake import build_card
from aralnode.core.identity import KeyRing
from aralnode.testing import fixed_identity
from aralnode.transport.grpc_client import NodeClient
from bench._proc import Child, server
from bench._report import Report, cpus, median, percentile
from bench._servers import CLIENT_SEED, LIBRARY, SERVER_SEED
from bench.envelope import per_op

SLICE = 0.4  # seconds per case per round
WARMUP = 0.3  # seconds per case, once, before the rounds
ROUNDS = {1: 10, 16: 20}  # rounds at each number of calls in flight
PARAMS = {"text": "hello, mesh", "times": 1}

Call = Callable[[], Awaitable[object]]


@dataclass
class Tally:
    """One case at one number in flight, over all its slices."""

    calls: int = 0
    seconds: float = 0.0
    cpu: float | None = 0.0  # client + server CPU seconds; None without /proc
    latencies: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us(self) -> float | None:
        """CPU per call, client and server together."""
        return None if self.cpu is None else self.cpu / self.calls * 1e6


async def _slice(call: Call, in_flight: int, seconds: float, child: Child, tally: Tally) -> float:
    """``in_flight`` workers call for ``seconds``; the slice's QPS, added to ``tally``."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while (t0 := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - t0)

    cpu0, child0 = time.process_time(), child.cpu_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    cpu, child1 = time.process_time() - cpu0, child.cpu_seconds()
    tally.calls += len(latencies)
    tally.seconds += elapsed
    tally.latencies += latencies
    if tally.cpu is not None and child0 is not None and child1 is not None:
        tally.cpu += cpu + child1 - child0
    else:
        tally.cpu = None
    return len(latencies) / elapsed


def _invoke_stub(channel: grpc.aio.Channel) -> Callable[[pb.InvokeRequest], Awaitable[object]]:
    return channel.unary_unary(
        "/aral.v1.AgentNode/Invoke",
        request_serializer=pb.InvokeRequest.SerializeToString,
        response_deserializer=pb.InvokeResponse.FromString,
    )


@contextlib.asynccontextmanager
async def _bare_case(child: Child) -> AsyncIterator[Call]:
    payload = codec.encode(PARAMS)
    content = build_content(
        sender="bench",
        recipient="",
        body=pb.Body(
            type=pb.MessageType.MESSAGE_TYPE_REQUEST, action="demo.echo", parameters=payload
        ),
        clock=SYSTEM_CLOCK,
    )
    request = pb.InvokeRequest(message=seal(content, None))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
        invoke = _invoke_stub(channel)

        async def call() -> object:
            # Build a fresh envelope like the node cases do, so the client side does
            # comparable message work; the bare server only echoes it.
            content.header.message_id = str(time.perf_counter_ns())
            request.message.content = content.SerializeToString()
            return await invoke(request)

        yield call


@contextlib.asynccontextmanager
async def _bare_signed_case(child: Child) -> AsyncIterator[Call]:
    """The bare echo with the four ES256 operations of a signed call and nothing else."""
    me, server_key = fixed_identity(CLIENT_SEED), fixed_identity(SERVER_SEED).public_key
    payload = codec.encode(PARAMS)
    content = build_content(
        sender=me.node_id,
        recipient="",
        body=pb.Body(
            type=pb.MessageType.MESSAGE_TYPE_REQUEST, action="demo.echo", parameters=payload
        ),
        clock=SYSTEM_CLOCK,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
        invoke = _invoke_stub(channel)
        request = pb.InvokeRequest()

        async def call() -> object:
            content.header.message_id = str(time.perf_counter_ns())
            raw = content.SerializeToString()
            request.message.content = raw
            request.message.signature.CopyFrom(me.sign(pb.PAYLOAD_MESSAGE, raw))
            response: pb.InvokeResponse = await invoke(request)  # type: ignore[assignment]
            reply = response.message
            server_key.verify(pb.PAYLOAD_MESSAGE, reply.content, reply.signature)
            return reply

        yield call


@contextlib.asynccontextmanager
async def _bare_envelope_case(child: Child) -> AsyncIterator[Call]:
    """The bare echo with the envelope work of an unsigned call and nothing else:
    build and seal each request, open and match each response (core functions)."""
    payload = codec.encode(PARAMS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
        invoke = _invoke_stub(channel)
        keyring = KeyRing()

        async def call() -> object:
            content = build_content(
                sender="bench",
                recipient="",
                body=pb.Body(type=REQUEST, action="demo.echo", parameters=payload),
                clock=SYSTEM_CLOCK,
            )
            request = pb.InvokeRequest()
            seal_into(request.message, content, None)
            response: pb.InvokeResponse = await invoke(request)  # type: ignore[assignment]
            opened = open_message(
                response.message, keyring=keyring, replay=None, require_signature=False
            )
            if opened.body.correlation_id != content.header.message_id:
                raise AssertionError("response does not answer the request")
            return opened  # the result stays encoded: payload work is not envelope work

        yield call


@contextlib.asynccontextmanager
async def _node_case(child: Child, signed: bool) -> AsyncIterator[Call]:
    identity = fixed_identity(CLIENT_SEED) if signed else None
    address = f"127.0.0.1:{child.port}"
    async with NodeClient(address, identity=identity, keyring=KeyRing()) as client:
        if identity is not None:
            card = build_card(
                identity,
                name="bench-client",
                endpoints=[],
                registry=CapabilityRegistry(),
                clock=SYSTEM_CLOCK,
            )
            await client.handshake(card)

        async def call() -> object:
            return await client.request("demo.echo", PARAMS, sign=signed)

        yield call


@contextlib.asynccontextmanager
async def _method_case(child: Child) -> AsyncIterator[Call]:
    """``library.v1.Library/GetBook`` with the generated messages, as any gRPC
    client of the user's service calls it (the same call on either server)."""
    lib = import_spec(LIBRARY).lib
    async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
        get_book = channel.unary_unary(
            "/library.v1.Library/GetBook",
            request_serializer=lib.GetBookRequest.SerializeToString,
            response_deserializer=lib.Book.FromString,
        )
        request = lib.GetBookRequest(shelf="sci", book_id=1)

        async def call() -> object:
            return await get_book(request)

        yield call


def _es256_costs() -> tuple[float, float]:
    """Microseconds per ES256 sign and verify of a request-sized payload, in process
    (``per_op``'s best of runs: the least these operations can cost here)."""
    identity = fixed_identity(CLIENT_SEED)
    data = b"x" * 300
    sig = identity.sign(pb.PAYLOAD_MESSAGE, data)
    key = identity.public_key
    return (
        per_op(lambda: identity.sign(pb.PAYLOAD_MESSAGE, data)),
        per_op(lambda: key.verify(pb.PAYLOAD_MESSAGE, data, sig)),
    )


# A user's method: the node against the same servicer on a plain grpc.aio server.
METHOD_CASES = (
    ("method_plain", "library GetBook, plain grpc.aio server"),
    ("method_node", "library GetBook, served by the node"),
)
CASES = (
    ("bare", "bare grpc.aio echo"),
    ("unsigned", "node Invoke, unsigned"),
    ("signed", "node Invoke, ES256 signed"),
    ("bare_envelope", "reference: bare echo + envelope work only, unsigned"),
    ("bare_signed", "reference: bare echo + the 4 ES256 ops only"),
)


# Each case next to the reference it is compared with (see the module docstring).
ORDER = (
    "bare",
    "bare_envelope",
    "unsigned",
    "signed",
    "bare_signed",
    "method_plain",
    "method_node",
)
OPEN = {
    "bare": _bare_case,
    "bare_envelope": _bare_envelope_case,
    "unsigned": lambda child: _node_case(child, signed=False),
    "signed": lambda child: _node_case(child, signed=True),
    "bare_signed": _bare_signed_case,
    "method_plain": _method_case,
    "method_node": _method_case,
}


def run(report: Report) -> None:
    tallies = {(c, n): Tally() for c in ORDER for n in ROUNDS}
    ratios: dict[tuple[str, int], list[float]] = {}

    async def measure(child: dict[str, Child], in_flight: int) -> None:
        async with contextlib.AsyncExitStack() as stack:
            calls = {c: await stack.enter_async_context(OPEN[c](child[c])) for c in ORDER}
            for c in ORDER:
                await _slice(calls[c], in_flight, WARMUP, child[c], Tally())
            rounds = ROUNDS[in_flight]
            for r in range(rounds):
                print(f"  {in_flight} in flight: round {r + 1}/{rounds}", flush=True)
                order = ORDER if r % 2 == 0 else ORDER[::-1]
                got = {
                    c: await _slice(calls[c], in_flight, SLICE, child[c], tallies[(c, in_flight)])
                    for c in order
                }
                for c, _ in CASES[1:]:
                    ratios.setdefault((c, in_flight), []).append(got[c] / got["bare"])
                method = got["method_node"] / got["method_plain"]
                ratios.setdefault(("method_node", in_flight), []).append(method)

    async def main() -> None:
        with (
            server("bare") as bare,
            server("node", LIBRARY) as node,
            server("bare-signed") as crypto,
            server("bare-envelope") as envelope,
            server("library") as plain_library,
        ):
            child = {
                "bare": bare,
                "unsigned": node,
                "signed": node,
                "bare_signed": crypto,
                "bare_envelope": envelope,
                "method_plain": plain_library,
                "method_node": node,
            }
            for in_flight in ROUNDS:
                await measure(child, in_flight)

    asyncio.run(main())
    qps = {key: t.qps for key, t in tallies.items()}
    lat = {key: t.latencies for key, t in tallies.items()}
    rows = [
        f"{ROUNDS[1]} rounds at 1 in flight and {ROUNDS[16]} at 16, {SLICE} s per case in each,",
        "every case next to its reference and every other round reversed (see",
        "bench/unary.py); QPS pools all rounds, a ratio is the median of the per-round",
        "(paired) ratios; latencies pool all rounds.",
        "",
        "| case | in flight | QPS | ratio to bare | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for in_flight in (1, 16):
        bare_qps = qps[("bare", in_flight)]
        bare_lat = lat[("bare", in_flight)]
        for case, label in CASES:
            q = qps[(case, in_flight)]
            samples = lat[(case, in_flight)]
            p50, p99 = median(samples) * 1000, percentile(samples, 99) * 1000
            if case == "bare":
                report.add(f"unary.bare.c{in_flight}.qps", q, "calls/s")
                report.add(f"unary.bare.c{in_flight}.p50", p50, "ms")
                report.add(f"unary.bare.c{in_flight}.p99", p99, "ms")
                share = 1.0
            else:
                share = median(ratios[(case, in_flight)])
                report.add(f"unary.{case}.c{in_flight}.qps", q, "calls/s", bare_qps)
                report.add(f"unary.{case}.c{in_flight}.paired_ratio", share, "ratio")
                report.add(f"unary.{case}.c{in_flight}.p50", p50, "ms", median(bare_lat) * 1000)
                report.add(
                    f"unary.{case}.c{in_flight}.p99", p99, "ms", percentile(bare_lat, 99) * 1000
                )
            cells = (label, in_flight, f"{q:,.0f}", f"{share:.1%}", f"{p50:.3f}", f"{p99:.3f}")
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")

    def per_round(case: str) -> str:
        return ", ".join(f"{x:.1%}" for x in ratios[(case, 16)])

    def share_of(case: str, reference: str) -> float:
        """Median over rounds of case QPS / reference QPS at 16 in flight."""
        pairs = zip(ratios[(case, 16)], ratios[(reference, 16)], strict=True)
        return median([c / r for c, r in pairs])

    unsigned_share = share_of("unsigned", "bare_envelope")
    signed_share = share_of("signed", "bare_signed")
    bare_p50 = median(lat[("bare", 1)]) * 1000
    uns_p50 = median(lat[("unsigned", 1)]) * 1000
    rows += [
        "",
        f"p50 at 1 in flight: node unsigned {uns_p50:.3f} ms vs bare {bare_p50:.3f} ms "
        f"(+{uns_p50 - bare_p50:.3f} ms; floor: ≤ +0.25 ms).",
        "Floors (issue 2): signed ≥ 75 % and unsigned ≥ 90 % of bare QPS at 16 in flight.",
        "The signed case signs every request (client) and verifies it (node), and the node",
        "signs every response, which the client verifies: two signatures per call.",
        "",
        "The reference case is the bare echo with those four ES256 operations and nothing",
        "else: no signed Invoke can do less work, so its ratio "
        f"({median(ratios[('bare_signed', 16)]):.1%} at 16 in flight, per round:",
        f"{per_round('bare_signed')}) is the most a signed",
        "Invoke can reach on this machine; paired by round, the node's signed case does "
        f"{signed_share:.1%} of its QPS.",
        "The unsigned reference is the bare echo with the envelope work of an unsigned call",
        "and nothing else (the node's core functions: build and seal the request; open it,",
        "with header checks and the replay window; seal a response; open and match it): "
        f"{median(ratios[('bare_envelope', 16)]):.1%}",
        f"at 16 in flight (per round: {per_round('bare_envelope')}).",
        "What the node adds beyond it is the pipeline (admission, governance, listeners),",
        "parameter and result encoding, validation, and the call context; paired by round, "
        f"the node's unsigned case does {unsigned_share:.1%} of its QPS.",
        "",
        "Targets (issue 13): unsigned ≥ 95 % of the envelope reference, signed ≥ 90 % of the",
        "ES256 reference. To see what a change costs, compare this tree's node with an",
        "earlier revision's, paired the same way: `python -m bench.versus REV`.",
    ]
    report.add("unary.unsigned_vs_envelope.c16.paired_ratio", unsigned_share, "ratio")
    report.add("unary.signed_vs_es256_reference.c16.paired_ratio", signed_share, "ratio")
    rows += _method_rows(report, qps, ratios, lat)
    cpu = {c: tallies[(c, 16)].cpu_us for c, _ in CASES}
    if all(cpu.values()):
        rows += _cpu_rows(report, cpu, qps[("bare", 16)], _es256_costs())  # type: ignore[arg-type]
    report.section("Unary Invoke vs bare grpc.aio", rows)


def _method_rows(
    report: Report,
    qps: dict[tuple[str, int], float],
    ratios: dict[tuple[str, int], list[float]],
    lat: dict[tuple[str, int], list[float]],
) -> list[str]:
    """The user's method: the node against the same servicer on plain grpc.aio."""
    rows = [
        "",
        "A user's proto method (the library example's GetBook): the node, against the same",
        "servicer on a plain grpc.aio server with its generated stubs and no node; ratios",
        "paired by round.",
        "",
        "| case | in flight | QPS | node / plain | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for in_flight in (1, 16):
        plain = qps[("method_plain", in_flight)]
        node = qps[("method_node", in_flight)]
        share = median(ratios[("method_node", in_flight)])
        for case, label in METHOD_CASES:
            samples = lat[(case, in_flight)]
            p50, p99 = median(samples) * 1000, percentile(samples, 99) * 1000
            cell = "" if case == "method_plain" else f"{share:.1%}"
            rows.append(
                f"| {label} | {in_flight} | {qps[(case, in_flight)]:,.0f} | {cell} "
                f"| {p50:.3f} | {p99:.3f} |"
            )
        prefix = f"unary.user_method.c{in_flight}"
        report.add(f"{prefix}.qps", node, "calls/s", plain)
        report.add(f"{prefix}.paired_ratio", share, "ratio")
        plain_lat = lat[("method_plain", in_flight)]
        node_lat = lat[("method_node", in_flight)]
        report.add(f"{prefix}.p50", median(node_lat) * 1000, "ms", median(plain_lat) * 1000)
        report.add(
            f"{prefix}.p99",
            percentile(node_lat, 99) * 1000,
            "ms",
            percentile(plain_lat, 99) * 1000,
        )
    per_round = ", ".join(f"{x:.1%}" for x in ratios[("method_node", 16)])
    rows += ["", f"Paired ratio at 16 in flight, per round: {per_round} (floor: ≥ 85 %)."]
    return rows


def _cpu_rows(
    report: Report, cpu: dict[str, float], bare_qps: float, es256: tuple[float, float]
) -> list[str]:
    """CPU per call at 16 in flight, and what it implies for the floors."""
    bare = cpu["bare"]
    sign, verify = es256
    crypto = 2 * (sign + verify)
    cores = cpus()
    busy = bare * 1e-6 * bare_qps / cores  # how busy the bare case kept the machine
    report.add("unary.bare.c16.cpu_per_call", bare, "us")
    for case, _ in CASES[1:]:
        report.add(f"unary.{case}.c16.cpu_per_call", cpu[case], "us", bare)
    report.add("unary.es256.sign", sign, "us")
    report.add("unary.es256.verify", verify, "us")
    # Any signed Invoke adds at least the four operations to a bare call's CPU: at
    # the bare case's utilisation that caps its ratio; with every core 100 % busy
    # (which no run reaches) the cap is higher by 1 / busy.
    ceiling = bare / (bare + crypto)
    report.add("unary.signed.c16.cpu_ceiling", ceiling, "ratio")
    report.add("unary.signed.c16.cpu_ceiling_saturated", min(1.0, ceiling / busy), "ratio")
    rows = [
        "",
        "CPU per call at 16 in flight (client + server, all threads; the cores are nearly",
        "saturated, so each case's QPS ratio follows bare CPU / its CPU):",
        "",
        "| case | CPU per call µs | over bare µs | bare CPU / case CPU |",
        "|---|---|---|---|",
    ]
    for case, label in CASES:
        rows.append(
            f"| {label} | {cpu[case]:.0f} | {cpu[case] - bare:+.0f} | {bare / cpu[case]:.1%} |"
        )
    rows += [
        "",
        f"ES256 here, in process at best: sign {sign:.1f} µs, verify {verify:.1f} µs; a",
        f"signed call needs two of each ({crypto:.0f} µs). Added to a bare call's {bare:.0f} µs",
        f"and with no other work at all, that caps signed Invoke at {ceiling:.1%} of bare QPS",
        f"while the machine is as busy as the bare case kept it ({busy:.0%} of {cores} cores),",
        f"and at {min(1.0, ceiling / busy):.1%} even with every core 100 % busy.",
        "In situ the reference case costs "
        f"{cpu['bare_signed'] - bare:.0f} µs per call over bare (the four operations and what",
        f"they bring: signatures on the wire, their protos; "
        f"{(cpu['bare_signed'] - bare) / crypto:.1f} times the operations'",
        "in-process best): the measured reference ratio above is the bound that holds.",
    ]
    return rows


if __name__ == "__main__":
    r = Report()
    run(r)
