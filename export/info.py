"""`edgegen info`: an artifact's manifest as a summary and rich tables."""
from __future__ import annotations

from ..runtimes.artifact import Artifact


def _shape(t: dict) -> str:
    return f"{t['name']}[{', '.join(map(str, t['shape']))}]"


def summary(art: Artifact) -> dict:
    comps = {}
    for name, c in art.components.items():
        v = c.get("validation", {})
        comps[name] = {
            "params": c.get("params"),
            "bytes": sum(f["bytes"] for f in c["files"].values()),
            "precision": c.get("precision"),
            "inputs": [_shape(t) for t in c["io"]["inputs"]],
            "outputs": [_shape(t) for t in c["io"]["outputs"]],
            "validation_passed": v.get("passed"),
            "max_abs_err": max((k["max_abs_err"] for k in v.get("checks", [])), default=None),
        }
    m = art.manifest
    return {"family": m["family"], "size": m.get("size"), "source": m.get("source"), "created": m.get("created"),
            "total_bytes": art.total_bytes(), "defaults": m["pipeline"]["defaults"],
            "passes": [p["name"] for p in m.get("passes", [])], "components": comps}


def render_info(art: Artifact) -> None:
    from rich.console import Console
    from rich.table import Table

    s = summary(art)
    con = Console()
    con.print(f"[bold]{art.root}[/]: {s['family']} ({s['size']}), source {s['source']['kind']}"
              f"{' ' + s['source']['path'] if s['source'].get('path') else ''}, created {s['created']}")
    con.print(f"defaults: {s['defaults']}; passes: {', '.join(s['passes'])}; total {s['total_bytes'] / 1e6:.1f} MB")
    t = Table("component", "params", "MB", "precision", "inputs", "outputs", "validation")
    for name, c in s["components"].items():
        ok = "ok" if c["validation_passed"] else "FAILED" if c["validation_passed"] is False else "-"
        err = f" (max err {c['max_abs_err']:.2g})" if c["max_abs_err"] is not None else ""
        t.add_row(name, f"{c['params'] / 1e6:.1f}M", f"{c['bytes'] / 1e6:.1f}", c["precision"],
                  "\n".join(c["inputs"]), "\n".join(c["outputs"]), ok + err)
    con.print(t)
