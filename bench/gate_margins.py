"""Every optimization pass on tiny exports of every pipeline architecture, with the
quality gate's measured values next to the pass's default thresholds: the evidence for
those defaults (how much margin each pass has, and where it is tight).

    python bench/gate_margins.py [--families sd15,sd21,...] [--passes int8,int4,...] \
        [--work /tmp/edgegen-gate] [--record gate_margins [--merge]]

--merge adds this run's rows to the existing record (replacing rows of the same family and
pass) instead of rewriting it, and lists this run's command and machine under "added".

Tiny configs with seeded random weights are harsher than real checkpoints for
quantization (no smooth trained weight distributions, 32-wide layers where one outlier
dominates a block); the real-size SD1.5 UNet figures are in optimize_sd15.md.
Data per family: 2 calibration prompts, 2 gate prompts, the family's default steps at
its tiny resolution.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

FAMILIES = ["sd15", "sd21", "sd-turbo", "sdxl", "sdxl-turbo", "lcm-sd15", "flux-schnell", "sd35-medium",
            "sana-1600m", "playground-v25", "auraflow"]
PASSES = [("fp16", {}), ("bf16", {}), ("int8", {}), ("int8-dynamic", {}), ("fp8", {}), ("int4", {}),
          ("int8-weights", {}), ("fuse", {}), ("prune", {"mode": "n:m"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--passes", default=",".join(p for p, _ in PASSES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgegen-gate"))
    ap.add_argument("--record")
    ap.add_argument("--merge", action="store_true", help="add the rows to the existing record")
    ap.add_argument("--note", help="a line for the record (e.g. what else ran on the machine)")
    args = ap.parse_args()

    from edgegen.export.exporter import export
    from edgegen.export.weights import Source
    from edgegen.optimize.apply import optimize
    from edgegen.optimize.calibrate import collect
    from edgegen.optimize.registry import get_pass
    from edgegen.runtimes.artifact import load_artifact
    from edgegen.runtimes.errors import EdgegenError

    specs = dict(PASSES)
    rows = []
    args.work.mkdir(parents=True, exist_ok=True)
    for family in args.families.split(","):
        src = args.work / family
        if not (src / "manifest.json").exists():
            export(family, Source("tiny", seed=0), src, force=True)
        traj = collect(load_artifact(src), calibration_prompts=2, gate_prompts=2)
        for name in args.passes.split(","):
            p = get_pass(name, **specs.get(name, {}))
            out = args.work / f"{family}-{name}"
            row = {"family": family, "pass": name, "thresholds": p.thresholds.to_dict()}
            t0 = time.time()
            try:
                optimize(src, [p], out, force=True, trajectories=traj)
                row.update(passed=True, **gate_summary(load_artifact(out, verify=False).manifest))
            except EdgegenError as e:
                row.update(passed=False, error=str(e))
            row["seconds"] = round(time.time() - t0, 1)
            shutil.rmtree(out, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and (i == 0 or sys.argv[i] != "--note")]
    result = {"command": "python bench/gate_margins.py " + " ".join(argv), "machine": describe(), "rows": rows,
              **({"note": args.note} if args.note else {})}
    if args.record and args.merge and (HERE / "results" / f"{args.record}.json").exists():
        result = merge(json.loads((HERE / "results" / f"{args.record}.json").read_text()), result)
    if args.record:
        write_record(args.record, result)


def merge(old: dict, new: dict) -> dict:
    """`old` with `new`'s rows in place of its rows of the same (family, pass) and the others after
    them; new's command, machine and families under "added"."""
    key = lambda row: (row["family"], row["pass"])  # noqa: E731
    fresh = {key(row): row for row in new["rows"]}
    rows = [fresh.pop(key(row), row) for row in old["rows"]] + list(fresh.values())
    run = {k: v for k, v in new.items() if k != "rows"}
    run["families"] = list(dict.fromkeys(row["family"] for row in new["rows"]))
    return {**old, "rows": rows, "added": [*old.get("added", []), run]}


def gate_summary(manifest: dict) -> dict:
    """An optimized artifact's gate: the worst component by cosine, the largest relative error,
    the end-to-end PSNR/SSIM."""
    gates = {c: r["gate"] for c, r in manifest["components"].items() if "gate" in r}
    worst = min(gates, key=lambda c: gates[c]["cosine"])
    e2e = manifest["gate"]["end_to_end"]
    return {"worst_component": worst, "cosine": gates[worst]["cosine"],
            "rel_err": max(g["rel_err"] for g in gates.values()), "psnr": e2e["psnr"], "ssim": e2e["ssim"]}


def write_record(name: str, r: dict) -> None:
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    added = [f"Rows of {', '.join(a['families'])} added by `{a['command']}` ({a['machine']['date']}, "
             + ", ".join(f"{k} {v}" for k, v in a["machine"]["versions"].items()) + ")"
             + (f"; {a['note']}" if a.get("note") else "") + "." for a in r.get("added", [])]
    lines = ["# Quality-gate margins on tiny exports (seeded random weights) and on the trained edgegen-shapes",
             "", f"`{r['command']}`", "",
             *[line for a in added for line in (a, "")],
             "Measured: worst component cosine / largest relative error (component outputs vs the parent graph "
             "along sampler trajectories), end-to-end worst image PSNR / SSIM vs the parent. Limits: the pass's "
             "default thresholds. Adherence (edgegen-shapes only, its weights are trained): the share of 100 "
             "held-out captions whose image a classifier reads as the right shape and colour, after the pass "
             "(fp32 in brackets); for a refused pass, of what the pass makes with its gate off "
             "(bench/shapes_adherence.py).", "",
             "| pass | family | cosine (min) | rel err (max) | PSNR dB (min) | SSIM (min) | adherence (fp32) | passed |",
             "|---|---|---|---|---|---|---|---|"]
    by_pass: dict[str, list] = {}
    for row in r["rows"]:
        by_pass.setdefault(row["pass"], []).append(row)
    for p, rows in by_pass.items():
        t = rows[0]["thresholds"]
        lines.append(f"| **{p}** | *limit* | {t['cosine']} | {t['rel_err']} | {t['psnr']} | {t['ssim']} | | |")
        for row in rows:
            adh = (f"{row['adherence']:.0%} ({row['adherence_fp32']:.0%})" if row.get("adherence") is not None
                   else "")
            if row["passed"]:
                lines.append(f"| {p} | {row['family']} ({row['worst_component']}) | {row['cosine']:.4f} | "
                             f"{row['rel_err']:.3f} | {row['psnr']:.1f} | {row['ssim']:.3f} | {adh} | yes |")
            else:
                lines.append(f"| {p} | {row['family']} | | | | | {adh} | no: {row['error'][:120]} |")
    (res / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
