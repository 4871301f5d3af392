"""Keeping every path an artifact names inside its folder, symlinks included.

A manifest or an ONNX graph's external-data entry could name `../x`, `/etc/x` or a symlink
that leads out; reading such a path would let a downloaded artifact read (and hash, or feed
to a runtime) any file on the host. Each is checked here before anything opens it.

Torch-free and onnx-free: the runtime install has only numpy, onnxruntime and tokenizers.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

from .errors import EdgegenError


def _within(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # symlink loop, embedded NUL byte
        return False


def _outside(what: str, rel, root: Path) -> EdgegenError:
    return EdgegenError(f"{what} {rel} resolves outside the artifact folder {root}; refusing to read it")


def inside(root: Path, rel: str | os.PathLike, what: str) -> Path:
    """`root / rel`, or EdgegenError if it resolves (following symlinks) outside `root`."""
    if not isinstance(rel, (str, os.PathLike)):
        raise EdgegenError(f"{what} {rel!r} in the manifest of {root} is not a path")
    path = Path(root) / rel
    if not _within(Path(root), path):
        raise _outside(what, rel, root)
    return path


def check_graph(root: Path, graph: Path) -> None:
    """`graph` and, for an ONNX file, every external-data file it names must lie inside `root`."""
    root, graph = Path(root), Path(graph)
    if not _within(root, graph):
        raise _outside("graph", graph, root)
    if graph.suffix == ".onnx" and graph.is_file():
        for loc in onnx_external_locations(graph):
            if not _within(root, graph.parent / loc):
                raise _outside(f"graph {graph}: external data", loc, root)


# The onnx package is not a runtime dependency, so external-data locations are found by walking
# the protobuf wire format by hand. Only the messages that can hold tensors are entered; every
# other length-delimited field (raw_data included) is skipped by its length, never read, so even
# a 2 GB graph with inline weights costs a few page faults through mmap.
# message -> {field number: message it holds}; "entry" is StringStringEntryProto.
_SCHEMA = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},        # TrainingInfoProto.initialization / algorithm
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},        # SparseTensorProto.values / indices
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "tensor": {13: "entry"},                     # TensorProto.external_data
}


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= end:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _Malformed


def _fields(buf, pos: int, end: int):
    """(field number, wire type, start, stop) of each field in buf[pos:end]."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        start = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, start = _varint(buf, pos, end)
            pos = start + size
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed
        if field == 0 or pos > end:
            raise _Malformed
        yield field, wire, start, pos


def _walk(buf, kind: str, pos: int, end: int, out: list[str]) -> None:
    children = _SCHEMA[kind]
    for field, wire, start, stop in _fields(buf, pos, end):
        sub = children.get(field)
        if sub is None:
            continue
        if wire != 2:
            raise _Malformed
        if sub != "entry":
            _walk(buf, sub, start, stop, out)
            continue
        entry = {f: buf[s:e] for f, w, s, e in _fields(buf, start, stop) if w == 2}
        if entry.get(1) == b"location" and 2 in entry:
            out.append(entry[2].decode())


def onnx_external_locations(graph: Path) -> list[str]:
    """The `location` of every external-data tensor in the ONNX model file `graph`, one per tensor."""
    out: list[str] = []
    try:
        with open(graph, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return out
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _walk(buf, "model", 0, len(buf), out)
    except (_Malformed, UnicodeDecodeError, RecursionError):
        raise EdgegenError(f"{graph} is not a valid ONNX file") from None
    return out
