"""A2A channel benchmark: one channel between two node *processes* vs a bare
grpc.aio bidi stream between two processes, measured in the same run.

Figures:

- ``channel.signed``: notifications/s over one channel, every message ES256-signed,
  verified, replay-checked and judged by governance on both ends, delivered to a
  handler; acked end to end (the sender's outbox is empty at the end).
- ``channel.signed_audited`` / ``channel.signed_observed``: the signed run with the
  100-rule policy and the audit log on both nodes (issue 16), and with metrics and
  tracing on both (issue 19, no exporter); each as a ratio of the signed run of its
  round.
- ``channel.unsigned``: the same without signatures (still parsed, replay-checked,
  governed on both ends, delivered and acked).
- ``bare``: a bare grpc.aio bidi stream carrying messages of the same size, one
  per stream message, acked cumulatively as often as the channel acks; and, for
  scale, the same bytes in frames of the channel's batch size (messages/frame
  measured at the receiver) with no per-message work at all.
- ``message latency``: one-way, sender to the receiver's handler, at 1,000 signed
  notifications/s, each counted from its due time (both processes read the same
  ``CLOCK_MONOTONIC``), vs messages of the unsigned size on the bare stream at the
  same rate.
- ``request latency``: request -> response round trips, signed both ways, each
  counted from its due time, vs a bare echo at the same rate: at 500 requests/s
  (1,000 messages/s on the channel) and at 1,000 requests/s (2,000 messages/s).

Run alone: ``python -m bench.channel`` (writes nothing; prints the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aralnode._runtime import tune_for_serving
from aralnode.core.channel import DEFAULT_WINDOW
from bench._pace import settle
from bench._proc import cpu_seconds
from bench._report import Report, median, percentile
from bench.governance import hundred_rules

ROOT = Path(__file__).resolve().parent.parent
SIGNED_N = 30_000
UNSIGNED_N = 60_000
LATENCY_RATE = 1000
LATENCY_SECONDS = 3.0
BARE_SECONDS = 2.0
ROUNDS = 5  # paired runs: the machine is shared, and a round varies by a tenth
# More rounds of the three signed paths alone (no latency phases): their ratios
# (issues 16 and 19) are medians of ROUNDS + PAIRED_ROUNDS pairs. On the bench's
# two shared cores one pair's ratio ranged 0.82 to 1.21 in an hour, same code.
PAIRED_ROUNDS = 6
BARE_ACK_EVERY = DEFAULT_WINDOW // 4  # as often as the channel acks
OBSERVED = "observed"  # issue 19: metrics and tracing on, both ends


# -- child processes ------------------------------------------------------------------------


def _config(name: str, data_dir: str, *, signing: bool, governed: str = "") -> Any:
    """``governed``: a policy file, which the node then runs, keeping its audit log;
    or ``OBSERVED``: metrics (over an HTTP port) and tracing on, no exporter."""
    from aralnode import NodeConfig

    fields: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "grpc_port": 0,
        "http_port": None,
        "discovery": "none",
        "data_dir": Path(data_dir) / name,
        "channel_signing": signing,
        "keepalive_ms": 2000,
    }
    if governed == OBSERVED:
        fields |= {"http_port": 0, "metrics": True, "tracing": True}
    elif governed:
        fields |= {"policy_file": Path(governed), "audit": True, "policy_reload_seconds": 0}
    return NodeConfig(**fields)


async def _receiver(data_dir: str, signing: bool, governed: str = "") -> None:
    from aralnode import Node

    node = Node(_config("recv", data_dir, signing=signing, governed=governed))
    count = 0
    one_way: list[float] = []

    def on_bench(msg: Any, tx: Any) -> None:
        nonlocal count
        count += 1

    def on_stamped(msg: Any, tx: Any) -> None:
        # Sender and receiver share CLOCK_MONOTONIC (asyncio's loop.time()).
        one_way.append((time.monotonic() - msg.data["t"]) * 1000)

    @node.capability(id="bench.echo")
    async def echo(t: float) -> float:
        return t

    await node.start()
    tune_for_serving()  # as `aralnode run` does
    node.on_notification("bench", on_bench)
    node.on_notification("bench.stamped", on_stamped)
    print(json.dumps({"address": node.address, "node_id": node.node_id}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Report counters when asked (a line on stdin).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopped = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        read = asyncio.ensure_future(reader.readline())
        await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not read.done():
            read.cancel()
            break
        if not read.result():
            break
        c = node.pipeline.counters
        print(
            json.dumps(
                {
                    "count": count,
                    "batches": c["channel.batches"],
                    "received": c["channel.received"],
                    "one_way_ms": one_way,
                }
            ),
            flush=True,
        )
    await node.stop(0.5)


async def _sender(
    data_dir: str, signing: bool, address: str, peer: str, n: int, latency: bool, governed: str = ""
) -> None:
    from aralnode import Node

    node = Node(_config("send", data_dir, signing=signing, governed=governed))
    await node.start()
    tune_for_serving()
    assert node.channels is not None
    await node.connect(address)
    assert await node.channels.wait_connected(peer, 20)
    out: dict[str, Any] = {}
    # Warm up (connections, caches, the receiver's code paths).
    for i in range(2000):
        await node.notify(peer, "bench", {"i": i})
    assert await node.channels.flush(peer, 60)
    t0 = time.perf_counter()
    for i in range(n):
        await node.notify(peer, "bench", {"i": i})
    assert await node.channels.flush(peer, 120)
    out["elapsed"] = time.perf_counter() - t0
    out["n"] = n
    out["message_bytes"] = _sample_size(node, peer)
    print(json.dumps(out), flush=True)
    if latency:
        go = functools.partial(asyncio.get_running_loop().run_in_executor, None, sys.stdin.readline)
        # Once the receiver's throughput counters are read (a line on stdin).
        await go()
        rtt = await _paced(lambda _: node.request(peer, "bench.echo", {"t": 0.0}, timeout=10))
        print(json.dumps({"rtt_ms": rtt}), flush=True)
        await go()
        # Round trips at 1,000 messages/s on the channel (a request and its response).
        half = await _paced(
            lambda _: node.request(peer, "bench.echo", {"t": 0.0}, timeout=10), LATENCY_RATE // 2
        )
        # One-way: the receiver's handler takes the latency of each (see _receiver).
        await _paced(lambda begin: node.notify(peer, "bench.stamped", {"t": begin}))
        assert await node.channels.flush(peer, 60)  # acked: every handler has run
        print(json.dumps({"rtt_half_ms": half}), flush=True)
    await node.stop(0.5)


def _sample_size(node: Any, peer: str) -> int:
    from aralnode import _proto as pb
    from aralnode.core.envelope import build_content, encode_payload, seal

    payload, _ = encode_payload({"i": 12345})
    body = pb.Body(
        type=pb.MessageType.MESSAGE_TYPE_NOTIFICATION, action="bench", parameters=payload
    )
    content = build_content(sender=node.node_id, recipient=peer, body=body, clock=node.clock)
    signer = node.identity if node.config.channel_signing else None
    return len(seal(content, signer).SerializeToString())


# How early the schedule wakes before a call is due: ``asyncio.sleep`` wakes up to
# 1 ms late (epoll's timeout is rounded up to whole milliseconds), and that is the
# load generator's lateness, not the node's. A stall of the sender's loop shorter
# than this margin is not counted either.
_WAKE_EARLY = 0.001


async def _paced(call: Any, rate: int = LATENCY_RATE) -> list[float]:
    """Start one ``call(begin)`` every 1/``rate`` s for LATENCY_SECONDS; their
    latencies (ms). ``begin`` (``loop.time()``, i.e. ``time.monotonic()``) is when
    the call counts from, for a one-way message to carry.

    A call that starts after its due time is counted from the due time: the sender
    is a node, and when its loop is busy the calls an application makes wait too (no
    coordinated omission). The schedule wakes a little early, so its own timer
    granularity is not charged; a call that starts early counts from its start."""
    loop = asyncio.get_running_loop()
    rtts: list[float] = []

    async def one(due: float) -> None:
        begin = min(loop.time(), due)
        await call(begin)
        rtts.append((loop.time() - begin) * 1000)

    tasks = []
    start = loop.time()
    total = int(rate * LATENCY_SECONDS)
    for i in range(total):
        due = start + i / rate
        delay = due - _WAKE_EARLY - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await settle(tasks)
    return rtts


# -- bare baseline --------------------------------------------------------------------------

_BARE_METHOD = "/bench.Bare/Stream"


async def _bare_server() -> None:
    import grpc

    async def stream(requests: Any, context: Any) -> Any:
        # "B<count:4><payload>" carries messages, acked cumulatively every
        # BARE_ACK_EVERY messages as the channel does (window / 4); "F" asks for an
        # ack of whatever is not acked yet; "E..." is echoed back, for latency;
        # "T<monotonic:8>..." is a stamped one-way message, whose latencies "S" asks
        # for (as JSON).
        total = acked = 0
        one_way: list[float] = []
        async for frame in requests:
            kind = frame[:1]
            if kind == b"E":
                yield frame
                continue
            if kind == b"T":
                one_way.append((time.monotonic() - struct.unpack("<d", frame[1:9])[0]) * 1000)
                continue
            if kind == b"S":
                yield json.dumps(one_way).encode()
                continue
            if kind == b"B":
                total += int.from_bytes(frame[1:5], "big")
                if total - acked < BARE_ACK_EVERY:
                    continue
            elif total == acked:
                # "F" with everything acked already: an ack now would be one frame
                # too many, and the echoes that follow would pair with the wrong reads.
                continue
            acked = total
            yield total.to_bytes(8, "big")

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"address": f"127.0.0.1:{port}"}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.2)


async def _bare_client(address: str, batch: int, size: int, latency: bool) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 << 20)]
    )
    call: Any = channel.stream_stream(
        _BARE_METHOD, request_serializer=None, response_deserializer=None
    )()
    payload = os.urandom(size)
    frame = (
        b"B"
        + batch.to_bytes(4, "big")
        + b"".join(len(payload).to_bytes(2, "big") + payload for _ in range(batch))
    )

    async def run_from(base: int, n: int) -> float:
        """Send ``n`` frames; seconds until the server acked all of them."""
        target = (base + n) * batch
        t0 = time.perf_counter()

        async def reader() -> None:
            while int.from_bytes(await call.read(), "big") < target:
                pass

        r = asyncio.ensure_future(reader())
        for _ in range(n):
            await call.write(frame)
        await call.write(b"F")
        await r
        return time.perf_counter() - t0

    # Calibrate to ~BARE_SECONDS, then measure (acks are cumulative per stream).
    probe_frames = max(10, 20_000 // batch)
    probe = await run_from(0, probe_frames)
    sent = probe_frames
    n_frames = max(probe_frames, int(probe_frames * BARE_SECONDS / max(probe, 1e-3)))
    elapsed = await run_from(sent, n_frames)
    if not latency:
        print(json.dumps({"elapsed": elapsed, "n": n_frames * batch}), flush=True)
        call.cancel()
        await channel.close()
        return
    # Latency: one message per frame, echoed, at the same pace as the channel's.
    echo = b"E" + payload

    async def rtt() -> None:
        await call.write(echo)
        await call.read()

    lock = asyncio.Lock()

    async def serial(_: float) -> None:
        async with lock:  # one stream: requests and echoes pair up in order
            await rtt()

    rtts = await _paced(serial)
    half = await _paced(serial, LATENCY_RATE // 2)

    async def stamped(begin: float) -> None:
        async with lock:  # one write at a time on the stream
            await call.write(b"T" + struct.pack("<d", begin) + payload)

    await _paced(stamped)
    await call.write(b"S")
    one_way = json.loads(await call.read())
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "n": n_frames * batch,
                "rtt_ms": rtts,
                "rtt_half_ms": half,
                "one_way_ms": one_way,
            }
        ),
        flush=True,
    )
    call.cancel()
    await channel.close()


# -- orchestration --------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "bench.channel", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"bench child {proc.args} exited with {proc.wait()}")
    return json.loads(line)  # type: ignore[no-any-return]


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _channel_run(
    tmp: str, *, signing: bool, n: int, latency: bool, governed: str = ""
) -> dict[str, Any]:
    recv = _spawn("recv", tmp, "1" if signing else "0", governed)
    try:
        info = _line(recv)
        send = _spawn(
            "send",
            tmp,
            "1" if signing else "0",
            info["address"],
            info["node_id"],
            str(n),
            "1" if latency else "0",
            governed,
        )
        try:
            result = _line(send)
            assert recv.stdin is not None
            recv.stdin.write("stats\n")
            recv.stdin.flush()
            stats = _line(recv)
            if latency:
                assert send.stdin is not None
                before = [cpu_seconds(recv.pid), cpu_seconds(send.pid)]
                send.stdin.write("go\n")
                send.stdin.flush()
                result.update(_line(send))
                after = [cpu_seconds(recv.pid), cpu_seconds(send.pid)]
                n = len(result["rtt_ms"])
                # CPU per request on each side (Linux /proc), receiver first.
                spent = [
                    (a - b) / n * 1e6
                    for a, b in zip(after, before, strict=True)
                    if a is not None and b is not None
                ]
                if len(spent) == 2:
                    result["cpu_us"] = spent
                send.stdin.write("go\n")
                send.stdin.flush()
                result.update(_line(send))  # the last phases are over and acked
                recv.stdin.write("stats\n")
                recv.stdin.flush()
                result["one_way_ms"] = _expect_all(_line(recv)["one_way_ms"], "channel")
        finally:
            _stop(send)
    finally:
        _stop(recv)
    result["batch"] = stats["received"] / max(1, stats["batches"])
    result["delivered"] = stats["count"]
    return result


def _expect_all(samples: list[float], what: str) -> list[float]:
    """``samples`` of a one-way phase, which must hold one per message sent."""
    expected = int(LATENCY_RATE * LATENCY_SECONDS)
    if len(samples) != expected:
        raise RuntimeError(f"{what}: {len(samples)} one-way samples, {expected} sent")
    return samples


def _bare_run(batch: int, size: int, *, latency: bool) -> dict[str, Any]:
    server = _spawn("bare-server")
    try:
        info = _line(server)
        client = _spawn(
            "bare-client", info["address"], str(batch), str(size), "1" if latency else "0"
        )
        try:
            result = _line(client)
        finally:
            _stop(client)
    finally:
        _stop(server)
    if latency:
        _expect_all(result["one_way_ms"], "bare stream")
    return result


def _paired(runs: list[dict[str, Any]], signed: list[dict[str, Any]]) -> float:
    """Median over rounds of a variant's msgs/s over the signed run of its round."""
    return median(
        [
            (v["n"] / v["elapsed"]) / (s["n"] / s["elapsed"])
            for v, s in zip(runs, signed, strict=True)
        ]
    )


def _signed_paths(tmp: str, r: int, policy: str, *, latency: bool) -> dict[str, dict[str, Any]]:
    """Round ``r`` of the three signed paths: off, issue 16's policy and audit log,
    issue 19's metrics and tracing (each on both ends). Every other round runs them
    in the reverse order, so that whatever a run does to the next one (a machine
    slower after seconds of load, or faster) falls on each path alike."""
    modes = (("signed", ""), ("audited", policy), ("observed", OBSERVED))
    out: dict[str, dict[str, Any]] = {}
    for kind, mode in modes if r % 2 == 0 else modes[::-1]:
        out[kind] = _channel_run(
            os.path.join(tmp, f"{kind[0]}{r}"),
            signing=True,
            n=SIGNED_N,
            latency=latency and kind == "signed",
            governed=mode,
        )
    return out


def run(report: Report) -> None:
    """Measure and add the figures (bounded: about seven minutes)."""
    # Rounds alternate the paths, so drift on a shared machine lands on all of them;
    # each figure is the median round (its range goes in the table).
    runs: dict[str, list[dict[str, Any]]] = {"signed": [], "unsigned": [], "bare": []}
    paired: dict[str, list[dict[str, Any]]] = {"signed": [], "audited": [], "observed": []}
    size = 0
    with tempfile.TemporaryDirectory(prefix="aral-bench-") as tmp:
        # Issue 16: the 100-rule policy of bench/governance.py and the audit log on
        # both nodes (every message judged and recorded on both sides).
        policy = str(hundred_rules(Path(tmp) / "policy.toml"))
        for r in range(ROUNDS + PAIRED_ROUNDS):
            print(f"  round {r + 1}/{ROUNDS + PAIRED_ROUNDS}", flush=True)
            signed_paths = _signed_paths(tmp, r, policy, latency=r < ROUNDS)
            for kind, result in signed_paths.items():
                paired[kind].append(result)
            if r >= ROUNDS:
                continue  # the signed paths alone: more pairs for their ratios
            runs["signed"].append(signed_paths["signed"])  # with its latency phases
            runs["unsigned"].append(
                _channel_run(os.path.join(tmp, f"u{r}"), signing=False, n=UNSIGNED_N, latency=False)
            )
            size = size or runs["unsigned"][0]["message_bytes"]
            # The bare baseline: a grpc.aio bidi stream carrying the same bytes, one
            # message per stream message, acked cumulatively like the channel -- a
            # stream written by hand, with no batching and no per-message work.
            runs["bare"].append(_bare_run(1, size, latency=True))
    rates = {k: sorted(v["n"] / v["elapsed"] for v in rs) for k, rs in (runs | paired).items()}
    s_rate, u_rate, bare_rate = (median(rates[k]) for k in ("signed", "unsigned", "bare"))
    signed, unsigned = runs["signed"][0], runs["unsigned"][0]
    signed_batch = median([r["batch"] for r in runs["signed"]])
    unsigned_batch = median([r["batch"] for r in runs["unsigned"]])
    batch = max(1, round(unsigned_batch))
    # The same bytes in frames of the channel's batch size, with no per-message work
    # at all: what the wire itself carries.
    raw = _bare_run(batch, size, latency=False)
    raw_rate = raw["n"] / raw["elapsed"]
    report.add("channel.signed_msgs_per_s", s_rate, "msgs/s", baseline=bare_rate)
    a_rate = median(rates["audited"])
    audited_ratio, observed_ratio = (
        _paired(paired[k], paired["signed"]) for k in ("audited", "observed")
    )
    report.add("channel.signed_audited_msgs_per_s", a_rate, "msgs/s", baseline=s_rate)
    report.add("channel.audited_vs_off.ratio", audited_ratio, "ratio")
    report.add(
        "channel.signed_observed_msgs_per_s", median(rates["observed"]), "msgs/s", baseline=s_rate
    )
    report.add("channel.observed_vs_off.ratio", observed_ratio, "ratio")
    report.add("channel.unsigned_governed_msgs_per_s", u_rate, "msgs/s", baseline=bare_rate)
    report.add("channel.bare_bidi_msgs_per_s", bare_rate, "msgs/s")
    report.add("channel.bare_bidi_batched_raw_msgs_per_s", raw_rate, "msgs/s")
    report.add("channel.unsigned_vs_batched_raw", u_rate, "msgs/s", baseline=raw_rate)

    def spread(k: str) -> str:
        return f"{rates[k][0]:,.0f} to {rates[k][-1]:,.0f}"

    # Latency: every round probes; the median round's p50 and p99.
    def per_round(rs: list[dict[str, Any]], q: float, key: str) -> list[float]:
        return sorted(percentile(r[key], q) for r in rs)

    def phase(key: str) -> tuple[float, float, list[float], float, float]:
        p99s = per_round(runs["signed"], 99, key)
        p50 = median(per_round(runs["signed"], 50, key))
        b50, b99 = (median(per_round(runs["bare"], q, key)) for q in (50, 99))
        return p50, median(p99s), p99s, b50, b99

    m50, m99, m99s, mb50, mb99 = phase("one_way_ms")
    report.add("channel.message_p50_at_1k_msgs_per_s", m50, "ms", baseline=mb50)
    report.add("channel.message_p99_at_1k_msgs_per_s", m99, "ms", baseline=mb99)
    h50, h99, h99s, hb50, hb99 = phase("rtt_half_ms")
    report.add("channel.request_rtt_p50_at_500_req_per_s", h50, "ms", baseline=hb50)
    report.add("channel.request_rtt_p99_at_500_req_per_s", h99, "ms", baseline=hb99)
    p50, p99, p99s, b50, b99 = phase("rtt_ms")
    report.add("channel.request_rtt_p50_at_1k_per_s", p50, "ms", baseline=b50)
    report.add("channel.request_rtt_p99_at_1k_per_s", p99, "ms", baseline=b99)
    cpu_rows = []
    if all("cpu_us" in r for r in runs["signed"]):
        recv_cpu = median([r["cpu_us"][0] for r in runs["signed"]])
        send_cpu = median([r["cpu_us"][1] for r in runs["signed"]])
        report.add("channel.request_cpu_receiver_us", recv_cpu, "us")
        report.add("channel.request_cpu_sender_us", send_cpu, "us")
        cpu_rows = [
            f"CPU per request at {LATENCY_RATE} req/s, all threads: receiver "
            f"{recv_cpu:.0f} µs, "
            f"sender {send_cpu:.0f} µs (each signs once and verifies once).",
        ]
    notes = [
        f"Median of {ROUNDS} alternating rounds (range in brackets); the three signed "
        f"paths: of {ROUNDS + PAIRED_ROUNDS} rounds, their order reversed every other round, "
        "each ratio the median of its rounds' ratios.",
        "",
        "| path | msgs/s | vs bare | notes |",
        "|---|---|---|---|",
        f"| signed (ES256) + verified + governed both ends | {s_rate:,.0f} ({spread('signed')}) "
        f"| {s_rate / bare_rate:.2f} | {signed_batch:.0f} msgs/frame, "
        f"{signed['message_bytes']} B/msg |",
        f"| signed, 100-rule policy + audit log both ends | {a_rate:,.0f} "
        f"({spread('audited')}) | {a_rate / bare_rate:.2f} | {audited_ratio:.2f} of signed "
        "(issue 16: >= 0.90, >= 10,000 msgs/s) |",
        f"| signed, metrics + tracing on both ends | {median(rates['observed']):,.0f} "
        f"({spread('observed')}) | {median(rates['observed']) / bare_rate:.2f} | "
        f"{observed_ratio:.2f} of signed (issue 19: >= 0.95) |",
        f"| unsigned, governed both ends | {u_rate:,.0f} ({spread('unsigned')}) "
        f"| {u_rate / bare_rate:.2f} "
        f"| {unsigned_batch:.0f} msgs/frame, {unsigned['message_bytes']} B/msg |",
        f"| **bare** grpc.aio bidi, one message per stream message | {bare_rate:,.0f} "
        f"({spread('bare')}) | 1.00 | same bytes, acked every {BARE_ACK_EVERY} like the channel |",
        f"| grpc.aio bidi, raw bytes in frames of {batch} | {raw_rate:,.0f} "
        f"| {raw_rate / bare_rate:.0f} | no per-message work at all: the unsigned channel is "
        f"{u_rate / raw_rate:.1%} of it |",
        "",
        f"Message latency at {LATENCY_RATE} msgs/s, one way (signed notification, sender "
        f"to the receiver's handler), counted from each message's due time "
        f"({LATENCY_SECONDS:.0f} s a round): p50 {m50:.2f} ms, p99 {m99:.2f} ms (rounds: "
        f"{', '.join(f'{x:.2f}' for x in m99s)}); bare stream p50 {mb50:.2f} ms, "
        f"p99 {mb99:.2f} ms.",
        "",
        f"Request round trip, counted from each request's due time (signed both ways, "
        f"{LATENCY_SECONDS:.0f} s a round):",
        "",
        f"- at {LATENCY_RATE // 2} req/s ({LATENCY_RATE} msgs/s on the channel): "
        f"p50 {h50:.2f} ms, p99 {h99:.2f} ms (rounds: "
        f"{', '.join(f'{x:.2f}' for x in h99s)}); bare echo p50 {hb50:.2f} ms, "
        f"p99 {hb99:.2f} ms;",
        f"- at {LATENCY_RATE} req/s ({2 * LATENCY_RATE} msgs/s on the channel): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (rounds: "
        f"{', '.join(f'{x:.2f}' for x in p99s)}); bare echo p50 {b50:.2f} ms, "
        f"p99 {b99:.2f} ms.",
        "",
        *cpu_rows,
    ]
    report.section("A2A channel (one stream, two node processes)", notes)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        report = Report()
        run(report)
        return
    role, rest = args[0], args[1:]
    if role == "recv":
        asyncio.run(_receiver(rest[0], rest[1] == "1", rest[2]))
    elif role == "send":
        data_dir, signing, address, peer, n, latency, governed = rest
        asyncio.run(
            _sender(data_dir, signing == "1", address, peer, int(n), latency == "1", governed)
        )
    elif role == "bare-server":
        asyncio.run(_bare_server())
    elif role == "bare-client":
        asyncio.run(_bare_client(rest[0], int(rest[1]), int(rest[2]), rest[3] == "1"))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
