"""`edgegen info` for a CoreML artifact: the manifest's `target` section as a summary and a table
(mlpackage IO as the saved spec declares it, deployment target, compute units, weight bits, sizes)."""
from __future__ import annotations


def _tensor(t: dict) -> str:
    return f"{t['name']} {'x'.join(map(str, t['shape']))} {t['dtype']}"


def target_summary(t: dict) -> dict:
    comp = t.get("compression") or {}
    gate = comp.get("gate") or {}
    e2e = gate.get("end_to_end")
    return {
        "target": "coreml", "settings": t["settings"], "versions": t["versions"], "shape_profile": t["shape_profile"],
        "build_seconds": t["build"]["seconds"], "peak_rss_bytes": t["build"].get("peak_rss_bytes"),
        "compression": (comp.get("compression") or {}).get("name"),
        "gate": "skipped" if gate.get("skipped") else
        ({k: e2e[k] for k in ("passed", "psnr", "ssim", "prompts")} if e2e else None),
        "components": {
            name: {"mlpackage": c["mlpackage"], "bytes": c["bytes"], "spec_version": c["spec"]["spec_version"],
                   "loads_on": c["spec"]["deployment_target"], "deployment_target": c["deployment_target"],
                   "compute_units": c["compute_units"], "compute_precision": c["compute_precision"],
                   "attention": c["attention"], "average_bits": c["weight_bits"]["average_bits"],
                   "weight_bits": c["weight_bits"], "inputs": [_tensor(x) for x in c["spec"]["inputs"]],
                   "outputs": [_tensor(x) for x in c["spec"]["outputs"]], "conversion_seconds": c["conversion_seconds"],
                   "gate": ((gate.get("components") or {}).get(name) or {}).get("rel_err")}
            for name, c in t["components"].items()},
    }


def render_target(con, tg: dict) -> None:
    from rich.table import Table

    st, sp = tg["settings"], tg["shape_profile"]
    loads = sorted({"/".join(c["loads_on"]) or f"spec {c['spec_version']}" for c in tg["components"].values()})
    by: dict[str, list[str]] = {}
    for key, where in st["from"].items():
        if where != "option":
            by.setdefault(where, []).append(key.replace("_", " "))
    src = "; ".join(f"{', '.join(keys)} from the {where}" for where, keys in by.items())
    con.print(f"CoreML (coremltools {tg['versions'].get('coremltools')}): deployment target "
              f"{st['deployment_target']}, compute units {st['compute_units']}, attention {st['attention']}, "
              f"precision {st['precision']}{'; ' + src if src else ''}; static {sp['height'][0]}x{sp['width'][0]}, "
              f"batch {sp['batch'][0]}; packages load on {', '.join(loads)} or later; "
              f"converted in {tg['build_seconds']:.1f} s")
    gate = tg["gate"]
    if tg["compression"]:
        gate_txt = "gate skipped (--no-gate)" if gate == "skipped" else \
            f"gate {'passed' if gate['passed'] else 'FAILED'}: PSNR {gate['psnr']:.2f} dB, SSIM {gate['ssim']:.4f} " \
            f"against uncompressed PyTorch (worst of {gate['prompts']} prompts)"
        con.print(f"compression {tg['compression']}; {gate_txt}")
    t = Table("component", "MB", "bits/weight", "compute", "units", "inputs", "outputs")
    for name, c in tg["components"].items():
        t.add_row(name, f"{c['bytes'] / 1e6:.1f}", f"{c['average_bits']:.2f}" if c["average_bits"] else "-",
                  c["compute_precision"], c["compute_units"], "\n".join(c["inputs"]), "\n".join(c["outputs"]))
    con.print(t)
