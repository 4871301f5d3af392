"""`edgegen bench --device D` without an artifact: the device across every family.

For each family (or those given with --family) and each precision plan the device supports
(the planner's: baseline, 8-bit, 4-bit), a row says whether it fits and how (the planner's
verdict and peak, the same numbers `edgegen plan` prints), which plan the planner proposes, and
the latency per stage and per image. Latency is measured only where this host is the device and
an artifact of that family and precision is found under --artifacts; everywhere else it is
bench/estimate.py's roofline bound, and the row says so.

The estimate needs no artifact: the family's real architecture is built on the meta device
(shapes only, no memory), its runtime recipe comes from the same export code an artifact's
manifest does, and each component's weight bytes are the planner's for that precision.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..runtimes.errors import EdgegenError

GiB = 2 ** 30
NOTE = ("Rows marked 'estimate' are roofline lower bounds from the device profile (peak throughput and "
        "bandwidth), not measurements; rows marked 'measured' ran here on an artifact from --artifacts "
        "(random-weight artifacts are valid for speed and memory).")


def family_recipe(family: str) -> dict:
    """The runtime recipe an export of the family's real architecture would write."""
    from ..export.arch import get_arch
    from ..export.families import get_family
    from ..export.weights import build_random

    fam = get_family(family)
    return get_arch(fam.arch).recipe(fam, build_random(fam, False, 0, device="meta"), fam.resolution)


def family_manifest(family: str, plan: dict, recipe: dict) -> dict:
    """A manifest-shaped view of a family at one precision plan: what estimate() reads."""
    comps = {s["component"]: {"precision": s["precision"],
                              "files": {"weights": {"bytes": int(s["weights_gib"] * GiB)}}} for s in plan["stages"]}
    return {"family": family, "size": "full", "pipeline": recipe, "components": comps}


_FLOPS: dict[tuple, dict[str, float]] = {}


def _flops(manifest: dict, height: int, width: int, cfg_batch: int) -> dict[str, float]:
    """count_flops, once per family and size in a process (it depends on neither precision nor device)."""
    from .estimate import count_flops

    key = (manifest["family"], height, width, cfg_batch)
    if key not in _FLOPS:
        _FLOPS[key] = count_flops(manifest, height, width, cfg_batch)
    return _FLOPS[key]


def find_artifacts(folder: Path | None) -> dict[tuple[str, str], Path]:
    """(family, denoiser precision) -> artifact folder, for full-size artifacts under `folder`."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise EdgegenError(f"--artifacts {folder}: not a folder")
    out = {}
    for m in sorted(folder.glob("*/manifest.json")):
        try:
            man = json.loads(m.read_text())
            den = man["pipeline"]["denoiser"]
            if man.get("size") == "full":
                out.setdefault((man["family"], man["components"][den].get("precision", "fp32")), m.parent)
        except (ValueError, KeyError):
            continue
    return out


def device_bench(profile, families: list[str] | None, artifacts: Path | None, steps: int | None,
                 say=lambda msg: None) -> dict:
    from ..export.families import families as all_families
    from ..profiles import planner
    from ..runtimes.shape_profile import cfg_batch
    from .estimate import estimate
    from .host import detect, matches

    from ..export.families import get_family

    # get_family: aliases work, unknown and closed names fail in one line.
    names = [get_family(f).name for f in families] if families else list(all_families())
    found = find_artifacts(artifacts)
    host = detect()
    here = matches(profile, host)
    rows = []
    for fam in names:
        say(f"{fam}: plans and estimate")
        plan = planner.plan_for_device(fam, profile)
        proposal = (plan["proposal"] or {}).get("label")
        recipe = family_recipe(fam)
        for p in plan["plans"]:
            man = family_manifest(fam, p, recipe)
            d = man["pipeline"]["defaults"]
            n = steps or d["steps"]
            row = {"family": fam, "plan": p["label"], "precisions": p["precisions"], "verdict": p["verdict"],
                   "meaning": p["meaning"], "resident_peak_gib": p["resident_peak_gib"],
                   "sequential_peak_gib": p["sequential_peak_gib"], "usable_gib": p["usable_gib"],
                   "proposed": p["label"] == proposal, "steps": n, "height": plan["height"], "width": plan["width"]}
            den = man["pipeline"]["denoiser"]
            art = found.get((fam, p["precisions"][den]))
            if art is not None and here:
                row.update(_measured(art, profile, host, n, plan["height"], plan["width"], say))
            else:
                flops = _flops(man, plan["height"], plan["width"], cfg_batch(man["pipeline"]))
                est = estimate(man, profile, n, plan["height"], plan["width"], d["guidance"], flops)
                row.update(source="estimate", seconds_per_image=est["end_to_end_seconds"],
                           stages={k: v["seconds"] for k, v in est["stages"].items()},
                           why_estimate=("no artifact of this family and precision under --artifacts"
                                         if here else f"this host is not a {profile.name}"))
            rows.append(row)
    return {"kind": "device", "device": profile.to_dict(), "host": host.to_dict(), "host_is_device": here,
            "rows": rows, "note": NOTE}


def _measured(art: Path, profile, host, steps: int, height: int, width: int, say) -> dict:
    from ..runtimes.artifact import load_artifact
    from .harness import measure

    say(f"measuring {art}")
    body = measure(load_artifact(art), profile, host, None, 1, 1, steps, height, width, False, None, False)
    e = body["runtimes"]["edgegen"]
    return {"source": "measured", "artifact": str(art), "seconds_per_image": e["end_to_end"]["median"],
            "stages": {k: v["per_run"]["median"] for k, v in e["stages"].items()}}


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def table_rows(result: dict) -> list[tuple[str, ...]]:
    out = []
    for r in result["rows"]:
        st = r["stages"]
        den = next((k for k in st if k in ("unet", "transformer")), None)
        te = sum(v for k, v in st.items() if k.startswith("text_encoder"))
        fits = {"resident": "yes", "sequential": "yes, staged", "offload": "no"}[r["verdict"]]
        out.append((r["family"], r["plan"] + (" *" if r["proposed"] else ""), fits,
                    f"{r['resident_peak_gib']:.2f} / {r['sequential_peak_gib']:.2f}",
                    _ms(te), f"{_ms(st[den])} /{r['steps']}" if den else "-",
                    _ms(st.get("vae_decoder", 0.0)), _ms(r["seconds_per_image"]), r["source"]))
    return out


HEAD = ("family", "plan", "fits", "peak GiB res/seq", "text enc", "denoiser", "VAE dec", "per image", "latency")


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    d = result["device"]
    t = Table(*HEAD, title=f"{d['name']}: {d['description']}; each family at its default size and steps "
                           f"(denoiser: total /steps); * = the planner's proposal; 'staged' = components loaded "
                           f"one at a time")
    for row in table_rows(result):
        t.add_row(*row)
    con = Console()
    con.print(t)
    con.print(result["note"])


def write_report(result: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"device_{result['device']['name']}"
    md = [f"# {result['device']['name']} across families", "", "| " + " | ".join(HEAD) + " |",
          "|" + "---|" * len(HEAD)]
    md += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    md += ["", "`*` marks the planner's proposal (`edgegen plan FAMILY --device ...`).", "", result["note"]]
    paths = [folder / f"{name}.md", folder / f"{name}.json"]
    paths[0].write_text("\n".join(md) + "\n")
    paths[1].write_text(json.dumps(result, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    best = [r for r in result["rows"] if r["proposed"]]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(best) + 1.5))
    ax.barh([f"{r['family']} ({r['plan']})" for r in best], [r["seconds_per_image"] for r in best],
            color=["tab:blue" if r["source"] == "measured" else "tab:gray" for r in best])
    ax.set_xlabel("seconds per image (gray: roofline estimate, blue: measured)")
    ax.set_title(f"{result['device']['name']}: the planner's proposed plan per family")
    fig.tight_layout()
    fig.savefig(folder / f"{name}.png", dpi=110)
    plt.close(fig)
    return [*paths, folder / f"{name}.png"]
