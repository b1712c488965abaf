"""I/O adapters: gRPC server and client, mDNS. They depend on ``aralnode.core`` only."""
