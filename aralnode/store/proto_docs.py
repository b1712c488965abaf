"""Proto comments for descriptions (capabilities, OpenAPI, MCP tools), read from the
descriptor sets beside the generated code.

Generated ``_pb2`` modules keep no source info. ``scripts/gen_protos.py`` (or a
user's own ``protoc --include_source_info --descriptor_set_out=<stem>.binpb``)
writes a ``FileDescriptorSet`` next to each ``<stem>_pb2.py``; this module finds
it through the imported module and reads the comments once. Protos without one
degrade to descriptions made from names.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from google.protobuf.descriptor import FileDescriptor

from aralnode._logs import get_logger
from aralnode.core.proto_schema import comments_from_descriptor_set, source_comments

log = get_logger("aralnode.store")


def _module_name(proto_file: str) -> str:
    # protoc's Python naming: "aral/v1/node.proto" -> "aral.v1.node_pb2".
    stem = proto_file.removesuffix(".proto").replace("-", "_")
    return stem.replace("/", ".") + "_pb2"


class ProtoDocs:
    """Comments by full name, per proto file, looked up lazily and cached (a
    ``core.proto_schema.ProtoComments``)."""

    def __init__(self) -> None:
        self._by_file: dict[str, dict[str, str]] = {}

    def for_file(self, file: FileDescriptor) -> dict[str, str]:
        """Comments of one file: its own source info, else ``<stem>.binpb`` beside its module."""
        found = self._by_file.get(file.name)
        if found is not None:
            return found
        comments = source_comments(file) or self._beside_module(file.name)
        self._by_file[file.name] = comments
        return comments

    def for_files(self, files: Iterable[FileDescriptor]) -> dict[str, str]:
        """Comments of ``files`` and everything they import, merged (full names are unique)."""
        merged: dict[str, str] = {}
        seen: set[str] = set()
        stack = list(files)
        while stack:
            f = stack.pop()
            if f.name in seen:
                continue
            seen.add(f.name)
            merged.update(self.for_file(f))
            stack.extend(f.dependencies)
        return merged

    def _beside_module(self, proto_file: str) -> dict[str, str]:
        module = sys.modules.get(_module_name(proto_file))
        module_file = getattr(module, "__file__", None)
        if not module_file:
            return {}
        path = Path(module_file).with_name(Path(proto_file).stem + ".binpb")
        try:
            data = path.read_bytes()
        except OSError:
            return {}
        try:
            by_file = comments_from_descriptor_set(data)
        except ValueError as exc:
            log.warning("ignoring %s: %s", path, exc)
            return {}
        for name, comments in by_file.items():
            self._by_file.setdefault(name, comments)
        return by_file.get(proto_file, {})
