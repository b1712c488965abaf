"""``aralnode run``'s operations flags (docs/observability.md): the log format and
OpenTelemetry tracing (metrics need no flag: ``/metrics`` is on with the HTTP port);
and the etcd discovery backend's (docs/discovery.md)."""

from __future__ import annotations

import argparse


def add_run_flags(run: argparse.ArgumentParser) -> None:
    """Add the flags to the ``run`` parser (each defaults to None: the config
    file's value, else the field's default)."""
    run.add_argument(
        "--log-format", choices=("text", "json"), help="text for people, json for machines"
    )
    run.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry spans for every call, W3C traceparent carried across nodes",
    )
    run.add_argument(
        "--otlp-endpoint",
        dest="tracing_otlp_endpoint",
        metavar="URL",
        help="export spans over OTLP/gRPC to URL (e.g. http://127.0.0.1:4317)",
    )
    run.add_argument(
        "--etcd-endpoint",
        dest="etcd_endpoint",
        action="append",
        metavar="URL",
        help="an etcd client URL, http(s)://HOST:PORT (repeatable; with --discovery etcd)",
    )
    run.add_argument("--etcd-prefix", metavar="PREFIX", help="the mesh's key prefix in etcd")
    run.add_argument(
        "--etcd-bridge",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-announce LAN peers into etcd and etcd's onto the LAN (--discovery mdns,etcd)",
    )
    run.add_argument(
        "--a2a",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the A2A standard (gRPC, JSON-RPC, HTTP+JSON, the Agent Card); default on",
    )
    run.add_argument(
        "--a2a-default-skill",
        metavar="CAPABILITY",
        help="the capability an A2A message naming no skill goes to, its text as `text`",
    )
