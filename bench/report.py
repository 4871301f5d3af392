"""Bench output: the terminal table (rich), and a report folder with Markdown, JSON and a PNG chart.

Measurements and estimates never share a table or a chart: an estimate's every heading says
"ESTIMATE".
"""
from __future__ import annotations

import json
from pathlib import Path

from ..runtimes.errors import EdgegenError


def _unit(s: float) -> tuple[float, str]:
    if s < 1e-3:
        return 1e6, "us"
    return (1e3, "ms") if s < 1 else (1.0, "s")


def _ms(s: float | None) -> str:
    if s is None:
        return "-"
    k, u = _unit(s)
    return f"{s * k:.3g} {u}" if s * k < 100 else f"{s * k:.0f} {u}"


def _flops(f: float) -> str:
    for k, u in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if f >= k:
            return f"{f / k:.3g} {u}"
    return f"{f:.0f} "


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _spread(d: dict | None) -> str:
    """median [min-max] in one unit (the median's)."""
    if not d:
        return "-"
    k, u = _unit(d["median"])
    f = lambda v: f"{v * k:.3g}" if v * k < 100 else f"{v * k:.0f}"
    return f"{f(d['median'])} [{f(d['min'])}-{f(d['max'])}] {u}"


def stem(result: dict) -> str:
    s, a = result["settings"], result["artifact"]
    kind = "estimate_" if result["kind"] == "estimate" else ""
    sched = "_interleaved" if str(result.get("schedule", "")).startswith("interleaved") else ""
    return f"bench_{kind}{a['family']}_{s['height']}x{s['width']}_{result['device']['name']}{sched}"


def _baseline(result: dict) -> str | None:
    return next((k for k in result.get("runtimes", {}) if k != "edgegen"), None)


def _stage_rows(result: dict) -> list[tuple]:
    """(stage, calls, edgegen per run, baseline per run, speedup) for a measurement."""
    rt = result["runtimes"]
    ours, base = rt["edgegen"], _baseline(result)
    other = rt[base] if base else None
    ratios = result.get("ratios", {})
    denoiser = result["artifact"]["denoiser"]
    rows = []
    for s, v in ours["stages"].items():
        b = other["stages"].get(s) if other else None
        rows.append((s, f"{v['calls_per_run']:g}", _spread(v["per_run"]), _spread(b["per_run"]) if b else "-",
                     _x(ratios.get("stage_speedup", {}).get(s))))
    for s, v in ours["stages"].items():
        if s == denoiser:
            b = other["stages"].get(s) if other else None
            sp = None if not b else b["per_call"]["median"] / v["per_call"]["median"]
            rows.append((f"{s} per step", "1", _spread(v["per_call"]), _spread(b["per_call"]) if b else "-", _x(sp)))
    rows.append(("end to end", "1", _spread(ours["end_to_end"]), _spread(other["end_to_end"]) if other else "-",
                 _x(ratios.get("end_to_end_speedup"))))
    return rows


def _memory_rows(result: dict) -> list[tuple]:
    rows = []
    for name, v in result["runtimes"].items():
        m, p = v["memory"], v.get("planner") or {}
        pred = f"{p['predicted_gib']:.2f} GiB ({p['error_pct']:+.1f}%)" if "error_pct" in p else p.get("note", "-")
        rows.append((name, f"{m['peak_gib']:.2f} GiB" if m.get("peak_gib") is not None else "n/a", pred,
                     f"{result['budget']['usable_gib']:.1f} GiB"))
    return rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    a, s = result["artifact"], result["settings"]
    what = f"{a['family']} {s['height']}x{s['width']}, {s['steps']} steps, {s['sampler']}, on {result['device']['name']}"
    if result["kind"] == "estimate":
        from rich import box

        t = Table(title=f"ESTIMATE (roofline, nothing measured): {what}", box=box.SIMPLE_HEAD)
        for c in ("stage", "calls", "FLOP/call", "weights", "bound", "per call", "total"):
            t.add_column(c, no_wrap=True, justify="left" if c in ("stage", "bound") else "right")
        for n, v in result["stages"].items():
            t.add_row(n, str(v["calls"]), _flops(v['flops_per_call']), f"{v['weight_bytes'] / 2**20:.0f} MiB",
                      v["bound"], _ms(v["seconds_per_call"]), _ms(v["seconds"]))
        t.add_row("end to end", "", "", "", "", "", _ms(result["end_to_end_seconds"]))
        con.print(t)
        mem = result["memory"]
        if "predicted_gib" in mem:
            con.print(f"ESTIMATE memory ({mem['model']}): {mem['predicted_gib']:.2f} GiB against "
                      f"{mem['usable_gib']:.2f} GiB usable" + (f"; {mem['verdict']}" if "verdict" in mem else ""))
        else:
            con.print(f"ESTIMATE memory: {mem.get('note')}")
        con.print(result["label"])
        return
    from rich import box

    base = _baseline(result)
    t = Table(title=f"measured: {what}; {s['runs']} runs after {s['warmup']} warm-up, median [min-max]",
              box=box.SIMPLE_HEAD)
    for c in ("stage", "calls", "edgegen", base or "baseline", "speedup"):
        t.add_column(c, justify="left" if c == "stage" else "right", no_wrap=True)
    for row in _stage_rows(result):
        t.add_row(*row)
    con.print(t)
    m = Table(title=f"peak memory ({result['measured_on']})", box=box.SIMPLE_HEAD)
    for c in ("runtime", "measured peak", "planner predicted", "device usable"):
        m.add_column(c)
    for row in _memory_rows(result):
        m.add_row(*row)
    con.print(m)
    if result.get("ratios", {}).get("peak_memory") is not None:
        con.print(f"memory ratio edgegen/{base}: {result['ratios']['peak_memory']:.2f}")
    if result.get("image_psnr_db") is not None:
        con.print(f"edgegen vs {base} image PSNR: {result['image_psnr_db']:.1f} dB (same weights, latents, sampler)")
    line = compile_line(result)
    if line:
        con.print(line)


def compile_line(result: dict) -> str | None:
    """Backend, compile time and compile gate of a compiled artifact's edgegen run."""
    e = result.get("runtimes", {}).get("edgegen", {})
    c = e.get("compile")
    if not c:
        return None
    g = c.get("gate")
    gate = f"compile gate PSNR {g['psnr']:.1f} dB vs the parent on onnxruntime CPU" if g else "compile gate skipped"
    return f"{e.get('runtime')}: compiled for {c['target']} in {c['seconds']:.1f} s; {gate}"


# -- report folder -----------------------------------------------------------------------

def markdown(result: dict, png_name: str | None) -> str:
    a, s, mach = result["artifact"], result["settings"], result["machine"]
    est = result["kind"] == "estimate"
    lines = [f"# {'ESTIMATE: ' if est else ''}edgegen bench: {a['family']} at {s['height']}x{s['width']} on "
             f"{result['device']['name']}", ""]
    if est:
        lines += [f"**{result['label']}.**", ""]
    lines += ["```", result["command"], "```", "",
              f"- date: {mach['date']}",
              f"- machine: {mach['cpu']}, {mach['cores']} cores, {mach['ram_gb']} GiB RAM, Python {mach['python']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
              f"- device profile: {result['device']['name']} ({result['device']['description']})",
              f"- artifact: {a['path']} ({a['family']}, {a['size']}, source {json.dumps(a['source'])}, "
              f"{a['bytes'] / 2**30:.2f} GiB, precisions {', '.join(sorted(set(a['precisions'].values())))})",
              f"- settings: {s['steps']} steps, sampler {s['sampler']}, guidance {s['guidance']}, seed {s['seed']}"
              + (f", {s['runs']} measured runs after {s['warmup']} warm-up" if not est else "")]
    if result.get("schedule"):
        lines.append(f"- schedule: {result['schedule']}")
    if result.get("weights_note"):
        lines.append(f"- note: {result['weights_note']}")
    lines.append("")
    if est:
        lines += ["| stage | calls | FLOPs/call | weight MiB | bound | est. time/call | est. total |",
                  "|---|---|---|---|---|---|---|"]
        for n, v in result["stages"].items():
            lines.append(f"| {n} | {v['calls']} | {_flops(v['flops_per_call'])} | {v['weight_bytes'] / 2**20:.0f} | "
                         f"{v['bound']} | {_ms(v['seconds_per_call'])} | {_ms(v['seconds'])} |")
        lines.append(f"| end to end (estimate) | | | | | | {_ms(result['end_to_end_seconds'])} |")
        mem = result["memory"]
        lines += ["", "ESTIMATE memory: " + (f"{mem['predicted_gib']:.2f} GiB predicted ({mem['model']}) against "
                                             f"{mem['usable_gib']:.2f} GiB usable" if "predicted_gib" in mem
                                             else mem.get("note", "")), "",
                  "Method: " + result["method"]["flops"] + "; " + result["method"]["time"] + "."]
    else:
        base = _baseline(result)
        lines += [f"Latency, median [min-max] of the measured runs; speedup = {base or 'baseline'} / edgegen.", "",
                  f"| stage | calls/run | edgegen | {base or 'baseline'} | speedup |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(r)} |" for r in _stage_rows(result)]
        lines += ["", f"Peak memory ({result['measured_on']}), each runtime in its own process:", "",
                  "| runtime | measured peak | planner predicted (error) | device usable |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(r)} |" for r in _memory_rows(result)]
        lines.append("")
        for name, v in result["runtimes"].items():
            m = v["memory"]
            lines.append(f"- {name}: {v['runtime']}; loaded in {v['load_seconds']:.1f} s"
                         + (f", RSS after load {m['rss_after_load_gib']:.2f} GiB" if "rss_after_load_gib" in m else "")
                         + (f", peak after each run {m['hwm_after_each_run_gib']} GiB" if m.get("hwm_after_each_run_gib") else "")
                         + f"; memory: {m['method']}"
                         + f"; CPU time per run (median) {v['cpu_seconds']['median']:.1f} s"
                         + (f"; host 1-min load average after each measured run {v['loadavg_1min']}"
                            if any(x is not None for x in v.get("loadavg_1min", [])) else "")
                         + (f"; planner: {v['planner']['model']}" if v.get("planner") and "model" in v["planner"] else ""))
        if result.get("ratios"):
            r = result["ratios"]
            lines.append(f"- end-to-end speedup {_x(r['end_to_end_speedup'])}, memory ratio edgegen/{base} "
                         f"{_x(r['peak_memory'])}")
        if result.get("image_psnr_db") is not None:
            lines.append(f"- edgegen and {base} images agree to {result['image_psnr_db']:.1f} dB PSNR "
                         "(same weights, initial latents and sampler)")
        if compile_line(result):
            lines.append(f"- {compile_line(result)}")
    if png_name:
        lines += ["", f"![chart]({png_name})"]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise EdgegenError("--report draws its chart with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    est = result["kind"] == "estimate"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    a, s = result["artifact"], result["settings"]
    fig.suptitle(f"{'ESTIMATE (roofline, not measured): ' if est else 'measured: '}{a['family']} "
                 f"{s['height']}x{s['width']}, {s['steps']} steps on {result['device']['name']}")
    if est:
        names = list(result["stages"])
        ax1.barh(names, [result["stages"][n]["seconds"] for n in names], color="tab:gray", hatch="//",
                 label="estimate (per generation)")
    else:
        rt = result["runtimes"]
        names = list(rt["edgegen"]["stages"]) + ["end to end"]
        h = 0.8 / len(rt)
        for i, (name, v) in enumerate(rt.items()):
            vals = [v["stages"].get(n, {}).get("per_run") if n != "end to end" else v["end_to_end"] for n in names]
            med = [x["median"] if x else 0 for x in vals]
            err = [[x["median"] - x["min"] if x else 0 for x in vals], [x["max"] - x["median"] if x else 0 for x in vals]]
            ax1.barh([j + i * h for j in range(len(names))], med, h, xerr=err, capsize=3, label=name)
        ax1.set_yticks([j + h * (len(rt) - 1) / 2 for j in range(len(names))], names)
    ax1.invert_yaxis()
    ax1.set_xlabel("seconds per generation (median, min-max)" if not est else "seconds (estimate)")
    ax1.set_xscale("log")
    ax1.legend(loc="best")
    ax1.set_title("latency per stage")
    usable = result["device"]["usable_gb"]
    if est:
        mem = result["memory"]
        if "predicted_gib" in mem:
            ax2.bar(["planner\n(estimate)"], [mem["predicted_gib"]], color="tab:gray", hatch="//")
    else:
        labels, vals, preds = [], [], []
        for name, v in result["runtimes"].items():
            labels.append(name)
            vals.append(v["memory"].get("peak_gib") or 0)
            preds.append((v.get("planner") or {}).get("predicted_gib"))
        bars = ax2.bar(labels, vals, color=["tab:blue", "tab:orange", "tab:green"][:len(labels)], label="measured peak")
        for b, val in zip(bars, vals):
            ax2.text(b.get_x() + b.get_width() / 2, val / 2, f"{val:.2f} GiB", ha="center", va="center",
                     color="white", fontweight="bold")
        xs = [b.get_x() + b.get_width() / 2 for b, p in zip(bars, preds) if p is not None]
        if xs:
            ax2.scatter(xs, [p for p in preds if p is not None], marker="D", color="black", zorder=3,
                        label="planner prediction")
    ax2.axhline(usable, color="red", linestyle="--", label=f"{result['device']['name']} usable ({usable:.1f} GiB)")
    ax2.set_ylabel("GiB")
    ax2.set_title("peak memory" + (" (estimate)" if est else f" ({result['measured_on']})"))
    ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, folder: Path) -> list[Path]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgegenError(f"cannot create --report {folder}: {e.strerror}") from None
    base = stem(result)
    png, md, js = folder / f"{base}.png", folder / f"{base}.md", folder / f"{base}.json"
    chart(result, png)
    md.write_text(markdown(result, png.name))
    js.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return [md, js, png]


if __name__ == "__main__":
    # Re-render a report from its JSON (after a change to this module):
    #   python -m edgegen.bench.report RESULT.json FOLDER
    import sys

    res = json.loads(Path(sys.argv[1]).read_text())
    print("\n".join(str(p) for p in write_report(res, Path(sys.argv[2]))))
