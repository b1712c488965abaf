"""The service layer: one implementation under every door.

A door (gRPC, REST, MCP, WebSocket, the A2A channel, the in-process API) turns the
bytes it read into a proto or JSON request and what it knows about the caller into a
``CallContext`` through the ``ContextBuilder``; everything after that is here, the
same for every door: the staged ``Pipeline`` (authenticate → authorize → rate-limit →
govern → handler → post-check → audit) and ``NodeService``, the node's built-in
methods. Nothing here imports a transport library.
"""
