"""Discovery through etcd: time to a full mesh, and what the registry carries.

A 3-member etcd cluster on loopback (``tests/etcd_cluster.py``; Debian's etcd,
``make etcd``) and N ``aralnode run --discovery etcd`` processes on 127.0.0.1,
all spawned at once. Times come from the nodes' own log lines (``peer NAME (ID)
connected``, ms resolution) against the moment the bench spawned the first one.
*all* is the first spawn to the moment the last node lists every other one as
CONNECTED (a verified handshake each way): it includes each process's start (the
interpreter and the imports, ~1 s of CPU each on a 2-core machine), which is most
of it; no baseline, as there is no bare equivalent.

The registry's load is read from etcd itself (its Prometheus ``/metrics``, summed
over the members) over a window at steady state after the 50-node mesh formed:
messages received on ``LeaseKeepAlive`` plus puts (writes), and messages sent on
``Watch`` streams (events delivered), per node per minute.

Names: ``discovery.etcd.converge.{10,30,50}_nodes.all`` (s),
``discovery.etcd.writes_per_node_min``, ``discovery.etcd.watch_msgs_per_node_min``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench._report import Report
from tests.etcd_cluster import ETCD, SKIP_REASON, EtcdCluster

# ARAL_ETCD_SIZES=5 for a quick look; the figures are 10, 30 and 50.
SIZES = tuple(int(x) for x in os.environ.get("ARAL_ETCD_SIZES", "10,30,50").split(","))
WINDOW = 20.0  # seconds of steady state the load is measured over
CONVERGE_TIMEOUT = 240.0
ARALNODE = str(Path(sys.executable).parent / "aralnode")
LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO aralnode\.discovery: peer (\S+) \((\w+)\) "
    r"connected"
)


Proc = subprocess.Popen[bytes]


def _spawn(base: Path, cluster: EtcdCluster, size: int) -> list[tuple[Proc, Path]]:
    procs = []
    flags = [a for e in cluster.endpoints for a in ("--etcd-endpoint", e)]
    # Every node of this bench dials from 127.0.0.1: the bounds per address (peers
    # that dialled from it and are not yet verified, 8; long-lived streams, 128: a
    # peer holds a few) are against one host posing as many nodes, and are raised to
    # the mesh's size, as an operator of one host would.
    config = base / "node.toml"
    config.write_text(
        f"max_inbound_per_address = {max(8, size)}\n"
        f"[grpc]\nmax_streams_per_address = {max(128, 8 * size)}\n"
    )
    flags += ["--config", str(config)]
    for i in range(size):
        log = base / f"n{i}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [ARALNODE, "-v", "run", "--name", f"n{i}", "--host", "127.0.0.1",
                 "--grpc-port", "0", "--http-port", "-1", "--discovery", "etcd", *flags,
                 "--data-dir", str(base / f"n{i}")],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append((proc, log))
    return procs


def _last_connect(log: Path, peers: int) -> float | None:
    """When the node's log says its ``peers``-th distinct peer connected, else None."""
    seen: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m and m.group(2) not in seen:
            seen[m.group(2)] = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return max(seen.values()) if len(seen) >= peers else None


def _converge(base: Path, cluster: EtcdCluster, size: int) -> tuple[float, list[Proc]]:
    started = time.time()
    procs = _spawn(base, cluster, size)
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    done: dict[int, float] = {}
    try:
        while len(done) < size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{size} nodes: {len(done)} complete in {CONVERGE_TIMEOUT}s")
            for i, (proc, log) in enumerate(procs):
                if i in done:
                    continue
                if proc.poll() is not None:
                    raise RuntimeError(f"node n{i} exited: {log.read_text()[-2000:]}")
                t = _last_connect(log, size - 1)
                if t is not None:
                    done[i] = t
            time.sleep(0.5)  # a poll interval of a bounded wait on the nodes' logs
    except BaseException:
        _stop([p for p, _ in procs])  # a failed run leaves no node behind
        raise
    return max(done.values()) - started, [p for p, _ in procs]


def _counters(cluster: EtcdCluster) -> dict[str, float]:
    """The registry's message counters, summed over the members."""
    got = {"keepalive_in": 0.0, "puts": 0.0, "watch_out": 0.0}
    for port in cluster.client_ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                method = s.labels.get("grpc_method", "")
                if s.name == "grpc_server_msg_received_total" and method == "LeaseKeepAlive":
                    got["keepalive_in"] += s.value
                elif s.name == "grpc_server_msg_sent_total" and method == "Watch":
                    got["watch_out"] += s.value
                elif s.name in ("etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"):
                    got["puts"] += s.value
    return got


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def run(report: Report) -> None:
    title = "Discovery through etcd (3-member cluster on loopback)"
    if ETCD is None:
        print(f"etcd bench skipped: {SKIP_REASON}", flush=True)
        report.section(title, [f"Skipped: {SKIP_REASON}."])
        return
    rows = []
    load: dict[str, float] = {}
    load_size = 0
    for size in SIZES:
        with tempfile.TemporaryDirectory(prefix="aral-bench-etcd-") as tmp:
            cluster = EtcdCluster(Path(tmp) / "etcd")
            procs: list[subprocess.Popen[bytes]] = []
            try:
                cluster.start()
                try:
                    took, procs = _converge(Path(tmp), cluster, size)
                except TimeoutError as exc:  # said in the report, not a crash of the bench
                    print(f"  {exc}", flush=True)
                    rows.append(f"| {size} | not converged: {exc} |")
                    continue
                print(f"  {size} nodes: full mesh in {took:.2f} s", flush=True)
                report.add(f"discovery.etcd.converge.{size}_nodes.all", took, "s")
                rows.append(f"| {size} | {took:.2f} |")
                if size == SIZES[-1] or not load:  # steady state: the largest that met
                    before = _counters(cluster)
                    t0 = time.monotonic()
                    time.sleep(WINDOW)  # the measured window of steady state
                    after = _counters(cluster)
                    per_min = 60.0 / (time.monotonic() - t0) / size
                    load = {k: (after[k] - before[k]) * per_min for k in after}
                    load_size = size
            finally:
                _stop(procs)
                cluster.close()
    writes = load["keepalive_in"] + load["puts"]
    report.add("discovery.etcd.writes_per_node_min", writes, "msgs/node/min")
    report.add("discovery.etcd.watch_msgs_per_node_min", load["watch_out"], "msgs/node/min")
    report.section(
        title,
        [
            "N `aralnode run --discovery etcd` processes on 127.0.0.1, spawned at once, lease",
            "TTL 10 s (the default). *all*: first spawn until every node lists every other one",
            "CONNECTED (process start-up included).",
            "",
            "| nodes | all (s) |",
            "|---|---|",
            *rows,
            "",
            f"Registry load at steady state ({load_size} nodes, {WINDOW:.0f} s window, from etcd's",
            "own metrics summed over the members), per node per minute:",
            f"keep-alive messages {load['keepalive_in']:.1f}, puts {load['puts']:.1f}, "
            f"watch messages delivered {load['watch_out']:.1f}.",
        ],
    )
