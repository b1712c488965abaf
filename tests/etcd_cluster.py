"""A real etcd cluster on loopback for the etcd discovery tests and bench.

Three members (``etcd`` from the system: ``make etcd`` installs Debian's
etcd-server), each on its own free client and peer ports, data under a directory
the caller owns. Health is asked of the cluster itself (a linearizable read
through each member answers), never waited for by sleeping. Members can be
stopped (SIGKILL, as a crash) and started again to test outages.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

ETCD = shutil.which("etcd")
SKIP_REASON = "no etcd server on PATH (make etcd installs Debian's etcd-server as root)"
START_TIMEOUT = 30.0


_PROBE = """
import sys, time, grpc
from aetcd import rpc
host, *ports, timeout = sys.argv[1:]
deadline = time.monotonic() + float(timeout)
for port in ports:
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        while True:
            try:
                rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"health"), timeout=1)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
"""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (each held until all are picked: no duplicates)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class EtcdCluster:
    """``members`` etcd processes forming one cluster on 127.0.0.1."""

    def __init__(
        self,
        base: Path,
        members: int = 3,
        *,
        host: str = "127.0.0.1",
        netns: str = "",
        tls: bool = False,
    ) -> None:
        """``netns``: run the members in that network namespace, on ``host`` (an
        address of the namespace), ports 23790 up (a fresh namespace has them free).
        ``tls``: clients speak TLS and must show a certificate of the cluster's CA
        (``self.tls``: the CA, the server's and a client's files; peers stay plain)."""
        if ETCD is None:
            raise RuntimeError(SKIP_REASON)
        self.base = base
        self.host, self.netns = host, netns
        self.names = [f"m{i}" for i in range(members)]
        ports = [23790 + i for i in range(2 * members)] if netns else _free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self.token = f"aral-{base.name}-{time.monotonic_ns()}"
        self.tls: dict[str, Path] = make_certificates(base / "tls", host) if tls else {}

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.scheme}://{self.host}:{p}" for p in self.client_ports]

    def channel(self, port: int) -> grpc.Channel:
        """A blocking channel to the member on ``port`` (with the client certificate
        under TLS)."""
        target = f"{self.host}:{port}"
        if not self.tls:
            return grpc.insecure_channel(target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls["ca"].read_bytes(),
            private_key=self.tls["client_key"].read_bytes(),
            certificate_chain=self.tls["client_cert"].read_bytes(),
        )
        return grpc.secure_channel(target, credentials)

    def _args(self, i: int, state: str) -> list[str]:
        assert ETCD is not None
        h = self.host
        cluster = ",".join(
            f"{n}=http://{h}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        wrap = ["ip", "netns", "exec", self.netns] if self.netns else []
        tls = [
            "--cert-file", str(self.tls["server_cert"]), "--key-file", str(self.tls["server_key"]),
            "--trusted-ca-file", str(self.tls["ca"]), "--client-cert-auth",
        ] if self.tls else []  # fmt: skip
        return [
            *wrap,
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.base / self.names[i]),
            "--listen-client-urls", f"{self.scheme}://{h}:{self.client_ports[i]}",
            "--advertise-client-urls", f"{self.scheme}://{h}:{self.client_ports[i]}",
            *tls,
            "--listen-peer-urls", f"http://{h}:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://{h}:{self.peer_ports[i]}",
            "--initial-cluster", cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip

    def start_member(self, i: int, *, state: str = "new") -> None:
        log = (self.base / f"{self.names[i]}.log").open("ab")
        self.procs[i] = subprocess.Popen(self._args(i, state), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy()

    def kill_member(self, i: int) -> None:
        """SIGKILL member ``i`` (a crash; its data stays for a restart)."""
        proc, self.procs[i] = self.procs[i], None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)

    def restart_member(self, i: int) -> None:
        self.start_member(i, state="existing")

    def kill_all(self) -> None:
        for i in range(len(self.names)):
            self.kill_member(i)

    def restart_all(self) -> None:
        for i in range(len(self.names)):
            self.restart_member(i)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Until a linearizable read succeeds through every running member."""
        if self.netns:  # asked from inside the namespace
            subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", _PROBE, self.host,
                 *map(str, self.client_ports), str(timeout)],
                check=True, timeout=timeout + 10, capture_output=True,
            )  # fmt: skip
            return
        deadline = time.monotonic() + timeout
        for i, port in enumerate(self.client_ports):
            if self.procs[i] is None:
                continue
            with self.channel(port) as channel:
                kv = rpc.KVStub(channel)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"etcd member {self.names[i]} not healthy in {timeout}s")
                    proc = self.procs[i]
                    if proc is not None and proc.poll() is not None:
                        log = (self.base / f"{self.names[i]}.log").read_text(errors="replace")
                        raise RuntimeError(f"etcd {self.names[i]} exited: {log[-2000:]}")
                    try:
                        # A bounded wait for the member (the RPC's own deadline).
                        kv.Range(rpc.RangeRequest(key=b"health"), timeout=min(1.0, left))
                        break
                    except grpc.RpcError:
                        continue

    def _kv(self, request: object, method: str) -> object:
        """``method`` through the running members in turn, until one answers (a
        leader change or a member just killed answers UNAVAILABLE), within a bound."""
        deadline = time.monotonic() + 20
        while True:
            for i, port in enumerate(self.client_ports):
                if self.procs[i] is None:
                    continue
                with self.channel(port) as channel:
                    try:
                        return getattr(rpc.KVStub(channel), method)(request, timeout=2)
                    except grpc.RpcError:
                        if time.monotonic() > deadline:
                            raise

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix`` now."""
        from aralnode.discovery.etcd import prefix_end

        key = prefix.encode()
        reply: Any = self._kv(rpc.RangeRequest(key=key, range_end=prefix_end(key)), "Range")
        return {kv.key.decode(): kv.value for kv in reply.kvs}

    def put(self, key: str, value: bytes) -> None:
        self._kv(rpc.PutRequest(key=key.encode(), value=value), "Put")

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self.procs = [None] * len(self.names)


def make_certificates(directory: Path, host: str) -> dict[str, Path]:
    """A CA, a server certificate for ``host`` (an IP address) and a client
    certificate, as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def issue(subject: str, key: Any, issuer: Any, issuer_key: Any, **ext: Any) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in ext.values():
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("aral-test-etcd-ca", ca_key, name("aral-test-etcd-ca"), ca_key,
               basic=(x509.BasicConstraints(ca=True, path_length=0), True))  # fmt: skip
    out: dict[str, Path] = {}

    def write(label: str, cert: Any, key: Any) -> None:
        out[f"{label}_cert"] = directory / f"{label}.crt"
        out[f"{label}_key"] = directory / f"{label}.key"
        out[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{label}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    out["ca"] = directory / "ca.crt"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for label, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                         ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))])
        cert = issue(label, key, ca.subject, ca_key, san=(san, False),
                     eku=(x509.ExtendedKeyUsage([usage]), False))  # fmt: skip
        write(label, cert, key)
    return out


@contextlib.contextmanager
def etcd_cluster(base: Path, members: int = 3) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(base, members)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
