"""Reading, verifying and writing an artifact folder: graphs plus manifest.json.

Every stage (export, optimize, ...) reads one artifact and writes a new one through
`write_artifact`, so no stage can leave a half-written folder or clobber one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgegenError
from .iospec import IOSpec
from .paths import check_graph, inside

FORMAT = "edgegen-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_files(root: Path, files: list[str]) -> dict[str, dict]:
    return {f: {"bytes": (root / f).stat().st_size, "sha256": sha256_file(root / f)} for f in files}


@dataclass
class Artifact:
    root: Path
    manifest: dict

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def components(self) -> dict[str, dict]:
        return self.manifest["components"]

    def io(self, component: str) -> IOSpec:
        return IOSpec.from_dict(self.components[component]["io"])

    def graph_path(self, component: str) -> Path:
        return inside(self.root, self.components[component]["graph"], f"component {component} graph")

    def verify(self) -> None:
        """Raise EdgegenError if a listed file is missing or its digest differs."""
        for name, comp in self.components.items():
            for rel, facts in comp["files"].items():
                path = self.root / rel
                if not path.is_file():
                    raise EdgegenError(f"artifact {self.root}: component {name} is missing {rel}")
                if path.stat().st_size != facts["bytes"] or sha256_file(path) != facts["sha256"]:
                    raise EdgegenError(f"artifact {self.root}: {rel} is corrupted (sha256 does not match the manifest)")
        for rel, facts in self.manifest.get("files", {}).items():
            path = self.root / rel
            if not path.is_file() or sha256_file(path) != facts["sha256"]:
                raise EdgegenError(f"artifact {self.root}: {rel} is missing or corrupted")

    def roles(self) -> dict[str, str]:
        """Component -> role (text_encoder, denoiser, vae_decoder, vae_encoder, other), from the
        pipeline recipe: stages decide by role, never by family name."""
        r = self.manifest.get("pipeline", {})
        out = {c: "other" for c in self.components}
        for te in r.get("text_encoders", []):
            out[te["component"]] = "text_encoder"
        for key in ("denoiser", "vae_decoder", "vae_encoder"):
            if r.get(key) in out:
                out[r[key]] = key
        return out

    def total_bytes(self) -> int:
        return sum(f["bytes"] for c in self.components.values() for f in c["files"].values())


def load_artifact(path: str | os.PathLike, verify: bool = True) -> Artifact:
    root = Path(path)
    if not root.is_dir():
        raise EdgegenError(f"no artifact at {root} (not a folder)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EdgegenError(f"{root} is not an edgegen artifact: it has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EdgegenError(f"{mpath} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise EdgegenError(f"{mpath} is not an edgegen manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise EdgegenError(f"{root} has format version {manifest['format_version']}; this edgegen reads up to {FORMAT_VERSION}")
    check_paths(root, manifest)
    art = Artifact(root, manifest)
    if verify:
        art.verify()
    return art


def _graph_entries(manifest: dict):
    """(label, entry) for every manifest entry with a "graph" and its "files"."""
    for name, comp in manifest.get("components", {}).items():
        yield f"component {name}", comp
    for key, entry in manifest.get("denoise_graphs", {}).items():
        yield f"denoise graph {key}", entry
    for key, entry in manifest.get("sampler_graphs", {}).items():
        for part in ("step", "scale"):
            if part in entry:
                yield f"sampler graph {key} {part}", entry[part]


def check_paths(root: Path, manifest: dict) -> None:
    """Refuse a manifest naming any path that resolves outside `root` (before reading any of them)."""
    for rel in manifest.get("files", {}):
        inside(root, rel, "file")
    graphs = []
    for label, entry in _graph_entries(manifest):
        graph = inside(root, entry["graph"], f"{label} graph")
        for rel in entry.get("files", {}):
            inside(root, rel, f"{label} file")
        # A compile's files are named relative to the graph's folder.
        folder = Path(entry["graph"]).parent
        compiled = entry.get("compiled") or {}
        for rel in compiled.get("files", []):
            inside(root, folder / rel, f"{label} compiled file")
        if compiled.get("cache_dir"):
            inside(root, folder / compiled["cache_dir"], f"{label} cache folder")
        if compiled.get("blob"):
            inside(root, folder / compiled["blob"], f"{label} compiled model")
        graphs.append(graph)
    # Only now, with every named path known to be inside, open the graphs for their external data.
    for graph in graphs:
        if graph.is_file():
            check_graph(root, graph)


def check_out_path(out: Path, force: bool) -> None:
    """Fail before any work if `out` exists and --force was not given (a dangling symlink
    counts: the final rename would fail on it after all the work)."""
    if os.path.lexists(out) and not force:
        raise EdgegenError(f"{out} already exists; pass --force to replace it")


@contextmanager
def write_artifact(out: str | os.PathLike, force: bool = False):
    """Yield a temp folder beside `out`; on success it is renamed to `out`, on error removed."""
    out = Path(out)
    check_out_path(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        if os.path.lexists(out):
            # Swap, so a failure here still leaves one complete artifact at `out`.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            if old.is_symlink() or not old.is_dir():
                old.unlink()    # --force replaces the link (or file) itself, never what it points at
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_manifest(root: Path, manifest: dict) -> None:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
