"""The sans-IO core of aralnode.

Nothing under ``aralnode.core`` imports grpc, zeroconf, starlette, uvicorn or sockets;
clocks are injected. A test (``tests/test_layering.py``) keeps it that way.
"""
