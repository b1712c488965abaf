from __future__ import annotations

import pytest

from aralnode.core.addresses import join_host_port


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("10.77.0.2", 50051, "10.77.0.2:50051"),
        ("::1", 8080, "[::1]:8080"),
        ("fe80::1", "*", "[fe80::1]:*"),
    ],
)
def test_join_host_port(host: str, port: int | str, text: str) -> None:
    assert join_host_port(host, port) == text
