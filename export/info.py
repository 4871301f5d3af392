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
        if "compiled" in c and c.get("gate"):
            comps[name]["compile_gate"] = {k: c["gate"].get(k) for k in ("passed", "cosine", "rel_err")}
        o = c.get("optimize")
        if o:  # an optimized component: its passes, sizes and quality gate instead of export's check
            g = c.get("gate", {})
            comps[name]["optimize"] = {
                "passes": o["passes"], "parent_bytes": o["parent_bytes"], "size_ratio": o["size_ratio"],
                "quantized_weights_ratio": (o.get("weights") or {}).get("ratio"),
                "gate": "skipped" if g.get("skipped") else {k: g.get(k) for k in ("passed", "cosine", "rel_err")}}
    m = art.manifest
    gate = m.get("gate", {})
    e2e = "skipped" if gate.get("skipped") else {k: gate["end_to_end"].get(k) for k in ("passed", "psnr", "ssim", "prompts")} \
        if "end_to_end" in gate else None
    t = m.get("target")
    target = None
    if t and t.get("target") == "coreml":
        from .coreml_info import target_summary

        target = target_summary(t)
    elif t:
        g = t.get("gate", {})
        target = {"target": t["target"], "backend": t["backend"], "versions": t["versions"], "options": t["options"],
                  "shape_profile": t["shape_profile"], "build_seconds": t["build"]["seconds"],
                  "host": t["fingerprint"]["host"],
                  "gate": "skipped" if g.get("skipped") else {k: g["end_to_end"].get(k) for k in ("passed", "psnr", "ssim")},
                  "component_gates": {n: {k: c.get("gate", {}).get(k) for k in ("passed", "cosine", "rel_err")}
                                      for n, c in m["components"].items() if "compiled" in c}}
    opts = {}
    for name, e in (m.get("pipeline_options") or {}).items():
        g = e.get("gate", {})
        opts[name] = {"version": e["version"], "config": e["config"],
                      "gate": "skipped" if g.get("skipped") else {k: g["end_to_end"].get(k) for k in ("passed", "psnr", "ssim")},
                      "denoiser_work": g.get("denoiser_work")}
    return {"family": m["family"], "size": m.get("size"), "target": target, "pipeline_options": opts, "source": m.get("source"), "created": m.get("created"),
            "total_bytes": art.total_bytes(), "defaults": m["pipeline"]["defaults"],
            "passes": [p["name"] for p in m.get("passes", [])], "components": comps, "gate_end_to_end": e2e}


def _quality(c: dict) -> str:
    g = c.get("compile_gate")
    if g:
        return f"compile gate {'ok' if g['passed'] else 'FAILED'}: cos {g['cosine']:.5f}, rel err {g['rel_err']:.4f}"
    o = c.get("optimize")
    if o:
        g = o["gate"]
        if g == "skipped":
            return "gate skipped"
        return f"gate {'ok' if g['passed'] else 'FAILED'}: cos {g['cosine']:.4f}, rel err {g['rel_err']:.3f}"
    ok = "ok" if c["validation_passed"] else "FAILED" if c["validation_passed"] is False else "-"
    return ok + (f" (max err {c['max_abs_err']:.2g})" if c["max_abs_err"] is not None else "")


def _size(c: dict) -> str:
    o = c.get("optimize")
    now = f"{c['bytes'] / 1e6:.1f}"
    if not o:
        return now
    q = f", weights {o['quantized_weights_ratio']:.2f}x" if o.get("quantized_weights_ratio") else ""
    return f"{o['parent_bytes'] / 1e6:.1f} -> {now} ({o['size_ratio']:.2f}x{q})"


def render_info(art: Artifact) -> None:
    from rich.console import Console
    from rich.table import Table

    s = summary(art)
    con = Console()
    con.print(f"[bold]{art.root}[/]: {s['family']} ({s['size']}), source {s['source']['kind']}"
              f"{' ' + s['source']['path'] if s['source'].get('path') else ''}, created {s['created']}")
    con.print(f"defaults: {s['defaults']}; passes: {', '.join(s['passes'])}; total {s['total_bytes'] / 1e6:.1f} MB")
    e2e = s["gate_end_to_end"]
    if e2e == "skipped":
        con.print("quality gate: skipped (--no-gate)")
    elif e2e:
        con.print(f"quality gate, end to end: {'passed' if e2e['passed'] else 'FAILED'}, image PSNR {e2e['psnr']:.2f} dB, "
                  f"SSIM {e2e['ssim']:.4f} (worst of {e2e['prompts']} prompts vs the parent)")
    for name, o in s["pipeline_options"].items():
        g = o["gate"]
        gate_txt = "gate skipped" if g == "skipped" else \
            f"gate {'passed' if g['passed'] else 'FAILED'}, PSNR {g['psnr']:.2f} dB, SSIM {g['ssim']:.4f} vs the parent"
        con.print(f"pipeline option {name} v{o['version']} {o['config']}: {gate_txt}")
    tg = s["target"]
    if tg and tg["target"] == "coreml":   # mlpackages: their own table replaces the ONNX one
        from .coreml_info import render_target

        render_target(con, tg)
        return
    if tg:
        sp = tg["shape_profile"]
        shapes = "static" if sp.get("static") else ", ".join(f"{k} {v[0]}..{v[2]}" for k, v in sp.items()
                                                             if isinstance(v, list)) or "the artifact's ranges"
        gate = tg["gate"]
        gate_txt = "skipped" if gate == "skipped" else \
            f"{'passed' if gate['passed'] else 'FAILED'}, PSNR {gate['psnr']:.2f} dB, SSIM {gate['ssim']:.4f}"
        con.print(f"compiled for [bold]{tg['target']}[/] ({', '.join(f'{k} {v}' for k, v in tg['versions'].items())}; "
                  f"{', '.join(f'{k}={v}' for k, v in tg['options'].items())}); shapes: {shapes}; "
                  f"built in {tg['build_seconds']:.1f} s; compile gate vs parent on onnxruntime CPU: {gate_txt}")
    t = Table("component", "params", "MB", "precision", "passes", "inputs", "outputs", "validation / gate")
    for name, c in s["components"].items():
        passes = ", ".join(c["optimize"]["passes"]) if c.get("optimize") else "export"
        t.add_row(name, f"{c['params'] / 1e6:.1f}M" if c["params"] is not None else "-", _size(c), c["precision"], passes,
                  "\n".join(c["inputs"]), "\n".join(c["outputs"]), _quality(c))
    con.print(t)
