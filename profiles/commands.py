"""`edgegen profiles` and `edgegen plan`: click commands the main CLI registers on its group.

Errors are EdgegenError; the main CLI prints them as one line and exits 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..runtimes.errors import EdgegenError
from .device import PRECISIONS, get_profile, load_profiles


@click.command("profiles")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_cmd(as_json: bool) -> None:
    """List device profiles (built in, plus $EDGEGEN_PROFILES_DIR)."""
    profs = load_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profs.values()], indent=1))
        return
    rows = [("name", "memory", "usable", "kind", "precisions", "backends")]
    rows += [(p.name, f"{p.memory_gb:g} GiB {p.memory_kind}", f"{p.usable_gb:.1f} GiB", p.kind,
              ",".join(p.precisions), ",".join(p.backends)) for p in profs.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _model_names() -> str:
    from .catalog import models
    return ", ".join(models())


def _describe(result: dict) -> str:
    from .planner import VERDICTS

    lines = [f"{result['title']} on {result['device']}: {result['height']}x{result['width']}, batch {result['batch']}"
             f"{' (x2 for CFG)' if result['cfg'] else ''}, {result['usable_gib']:.2f} GiB usable "
             f"({result['memory_model']})"]
    for p in result["plans"]:
        lines.append(f"\n[{p['label']}] {VERDICTS[p['verdict']]}: resident peak {p['resident_peak_gib']:.2f} GiB, "
                     f"sequential peak {p['sequential_peak_gib']:.2f} GiB (fits if x{1 + p['margin']:.2f} <= usable)")
        for s in p["stages"]:
            lines.append(f"  {s['component']:<16} {s['precision']:<5} weights {s['weights_gib']:7.2f}  "
                         f"activations {s['activations_gib']:6.2f}  stage peak {s['peak_gib']:7.2f} GiB")
    best = result["proposal"]
    if best is None:
        lines.append("\nproposal: none of these fits; it needs layer-level offload or a larger device")
    else:
        quant = sorted({f"{c}={q}" for c, q in best["precisions"].items()})
        lines.append(f"\nproposal: {best['label']} ({', '.join(quant)}), {VERDICTS[best['verdict']]}")
    return "\n".join(lines)


@click.command("plan")
@click.argument("family", required=False)
@click.option("--device", "device", help="Device profile name (see `edgegen profiles`).")
@click.option("--height", type=int, help="Image height in pixels (default: the model's native size).")
@click.option("--width", type=int, help="Image width in pixels (default: the model's native size).")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per prompt batch (CFG doubles it).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Force one precision instead of proposing one.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--table", is_flag=True, help="The models x GPU-memory fit table, in Markdown.")
@click.option("--out", type=click.Path(dir_okay=False), help="With --table: write the Markdown here.")
def plan_cmd(family, device, height, width, batch, precision, as_json, table, out) -> None:
    """Will FAMILY fit on --device, and at which precision? Or, with --table, the fit table."""
    from . import planner

    if table:
        if family or device:
            raise EdgegenError("plan --table takes no FAMILY or --device")
        md = planner.fit_table()
        if out:
            try:
                Path(out).write_text(md)
            except OSError as e:
                raise EdgegenError(f"cannot write {out}: {e.strerror}") from None
            click.echo(f"wrote {out}")
        else:
            click.echo(md, nl=False)
        return
    if out:
        raise EdgegenError("--out goes with --table")
    if not family:
        raise EdgegenError(f"give a model to plan (one of: {_model_names()}) or --table")
    if not device:
        raise EdgegenError(f"give --device (one of: {', '.join(load_profiles())})")
    profile = get_profile(device)
    result = planner.plan_for_device(family, profile, height, width, batch, precision)
    click.echo(json.dumps(result, indent=1) if as_json else _describe(result))
