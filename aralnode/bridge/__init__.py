"""Doors generated from the protos: REST (with OpenAPI), MCP and WebSocket.

They depend on ``aralnode.core`` and on node-level objects handed to them, never the
other way round; ``aralnode.bridge.http.HttpBridge`` assembles them on the node's
HTTP port.
"""
