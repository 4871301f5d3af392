"""`edgegen optimize`: apply registered passes to an artifact, behind a quality gate.

Registered on the main group in export/cli.py; imports stay inside the command so the
CLI starts without onnx.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..runtimes.errors import EdgegenError


def _prune_config(spec: str) -> dict:
    """'2:4' (N:M structured) or a fraction in (0, 1) (unstructured magnitude)."""
    if ":" in spec:
        n, _, m = spec.partition(":")
        if not (n.isdigit() and m.isdigit()) or not 0 < int(n) < int(m):
            raise EdgegenError(f"--prune {spec}: expected N:M with 0 < N < M (e.g. 2:4) or a sparsity in (0, 1)")
        return {"mode": "n:m", "n": int(n), "m": int(m)}
    try:
        s = float(spec)
    except ValueError:
        raise EdgegenError(f"--prune {spec}: expected N:M (e.g. 2:4) or a sparsity in (0, 1)") from None
    if not 0 < s < 1:
        raise EdgegenError(f"--prune {spec}: sparsity must be in (0, 1)")
    return {"mode": "magnitude", "sparsity": s}


def _kv(text: str, what: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise EdgegenError(f"{what} {text!r}: expected NAME=VALUE")
    return k.strip(), v.strip()


def _value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_spec(text: str, flag: str) -> tuple[str, dict]:
    """NAME[:key=value,...] (--pass, --pipeline-option) as a name and a typed config."""
    name, _, rest = text.partition(":")
    name = name.strip()
    cfg = dict(_kv(kv, f"{flag} {name}") for kv in rest.split(",") if kv) if rest else {}
    return name, {k: _value(v) for k, v in cfg.items()}


def parse_thresholds(values) -> dict[str, float]:
    """--threshold METRIC=VALUE options as a dict (the metric names are checked by the stage)."""
    out = {}
    for t in values:
        k, v = _kv(t, "--threshold")
        try:
            out[k] = float(v)
        except ValueError:
            raise EdgegenError(f"--threshold {t}: {v!r} is not a number") from None
    return out


# Precision flags: (pass name, help). One list drives `optimize` and `export`'s options.
FLAGS = (
    ("fp16", "fp16, with fp32 islands found from calibration data."),
    ("bf16", "bf16 weight storage (fp32 compute where the runtime has no bf16 kernels)."),
    ("int8", "int8 static QDQ (explicit quantization), calibrated on sampler trajectories."),
    ("int8-nncf", "int8 by NNCF (SmoothQuant, bias correction) on sampler trajectories; for OpenVINO."),
    ("int8-dynamic", "int8 dynamic, MatMul/Gemm only (fast on CPU)."),
    ("int8-weights", "int8 weight-only, blockwise (streams: any model size)."),
    ("fp8", "fp8 E4M3 QDQ for Ada/Hopper GPUs, same calibration as --int8."),
    ("int4", "int4 weight-only, blockwise: MatMulNBits + int4 DequantizeLinear for convs (streams)."),
    ("fuse", "graph fusions safe for the target (--pass fuse:target=cuda for GPU-only fused ops)."),
)


def build_passes(flags=(), prune=None, extra=(), calibration_method=None, int4_algo=None) -> list:
    from .registry import get_pass

    specs: list[tuple[str, dict]] = [(name, {}) for name in flags]
    if prune:
        specs.append(("prune", _prune_config(prune)))
    for text in extra:
        specs.append(parse_spec(text, "--pass"))
    passes = []
    for name, cfg in specs:
        if calibration_method and name in ("int8", "fp8"):
            cfg.setdefault("method", calibration_method)
        if int4_algo and name == "int4":
            cfg.setdefault("algo", int4_algo)
        passes.append(get_pass(name, **cfg))
    return passes


def pass_options(f):
    """The pass and gate options, shared by `optimize` and `export` (export then optimize)."""
    opts = [click.option(f"--{name}", "flag_" + name.replace("-", "_"), is_flag=True, help=text)
            for name, text in FLAGS]
    opts += [
        click.option("--prune", metavar="SPEC", help="2:4 structured sparsity, or a fraction (0.5) for magnitude pruning."),
        click.option("--pass", "extra", multiple=True, metavar="NAME[:K=V,...]", help="A registered pass with options."),
        click.option("--no-gate", is_flag=True, help="Skip the quality gate (results are not recorded)."),
        click.option("--threshold", multiple=True, metavar="METRIC=VALUE",
                     help="Override a gate limit: cosine, rel_err, psnr, ssim."),
        click.option("--calibration-method", type=click.Choice(["percentile", "entropy", "minmax", "distribution"]),
                     help="Activation calibrator for --int8/--fp8 (default: percentile / distribution)."),
        click.option("--int4-algo", type=click.Choice(["gptq", "rtn"]),
                     help="int4 scale search: rtn (default) or gptq (calibration-aware)."),
        click.option("--calibration-prompts", type=int, default=4, show_default=True),
        click.option("--gate-prompts", type=int, default=2, show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def parse_pass_options(kw: dict, required: bool = True) -> dict | None:
    """Pop pass_options' values from a command's kwargs: the `apply.optimize` keyword
    arguments they mean (passes built and checked), or None when no pass was asked for
    and `required` is False."""
    flags = [name for name, _ in FLAGS if kw.pop("flag_" + name.replace("-", "_"))]
    prune, extra = kw.pop("prune"), kw.pop("extra")
    no_gate, threshold = kw.pop("no_gate"), kw.pop("threshold")
    method, algo = kw.pop("calibration_method"), kw.pop("int4_algo")
    calibration_prompts, gate_prompts = kw.pop("calibration_prompts"), kw.pop("gate_prompts")
    if not required and not (flags or prune or extra):
        used = [o for o, v in (("--no-gate", no_gate), ("--threshold", threshold), ("--calibration-method", method),
                               ("--int4-algo", algo)) if v]
        if used:
            raise EdgegenError(f"{used[0]} only applies with a pass (e.g. --int8, --int4, --fp16)")
        return None
    passes = build_passes(flags, prune, extra, method, algo)
    thresholds = parse_thresholds(threshold)
    if calibration_prompts < 1 or gate_prompts < 1 or calibration_prompts + gate_prompts > 8:
        raise EdgegenError("--calibration-prompts and --gate-prompts must be >= 1 and sum to at most 8")
    from .registry import order_passes

    order_passes(passes)  # incompatible combinations fail here, before any work
    return {"passes": passes, "gate": not no_gate, "thresholds": thresholds,
            "calibration_prompts": calibration_prompts, "gate_prompts": gate_prompts}


@click.command("optimize")
@click.argument("artifact", type=click.Path(path_type=Path))
@pass_options
@click.option("--pipeline-option", "pipeline_options", multiple=True, metavar="NAME[:K=V,...]",
              help="A gated change to how the pipeline runs: cfg-cutoff[:ratio=0.4], deepcache[:interval=3], "
                   "vae-tiling[:tile=32,overlap=8], tiny-vae[:weights=DIR|HUB_ID|random]. Not combined with graph "
                   "passes in one run.")
@click.option("--components", help="Comma-separated components (default: each pass's usual ones).")
@click.option("--steps", type=int, help="Steps per trajectory (default: the family's).")
@click.option("--size", type=int, help="Image side for trajectories (default: the family's).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def optimize(artifact, pipeline_options, components, steps, size, out, force, **kw):
    """Optimize ARTIFACT's graphs into a new artifact; every pass is checked by a quality gate."""
    from ..runtimes.artifact import check_out_path

    check_out_path(out, force)
    if steps is not None and steps < 1:
        raise EdgegenError(f"--steps must be >= 1, got {steps}")
    if pipeline_options:
        run_pipeline_options(artifact, pipeline_options, out, force, components, steps, size, kw)
        return
    opts = parse_pass_options(kw)
    comps = [c.strip() for c in components.split(",") if c.strip()] if components else None
    run_optimize(artifact, out, force, components=comps, steps=steps, size=size, **opts)


def run_pipeline_options(artifact, specs, out, force, components, steps, size, kw) -> None:
    from .steps.apply import apply_options
    from .steps.registry import parse

    options = parse(specs)
    gate_prompts, no_gate, threshold = kw["gate_prompts"], kw["no_gate"], kw["threshold"]
    kw.update(no_gate=False, threshold=())   # theirs here, not a pass's
    if parse_pass_options(kw, required=False) is not None or components:
        raise EdgegenError("--pipeline-option runs alone: apply graph passes (and --components) in one optimize, "
                           "then the pipeline options on its artifact")
    if not 1 <= gate_prompts <= 8:
        raise EdgegenError("--gate-prompts must be between 1 and 8")
    path = apply_options(artifact, options, out, force, gate=not no_gate, thresholds=parse_thresholds(threshold),
                         gate_prompts=gate_prompts, steps=steps, size=size, say=lambda m: click.echo(m, err=True))
    from ..runtimes.artifact import load_artifact
    from ..runtimes.step_options import KEY

    for name, e in load_artifact(path, verify=False).manifest[KEY].items():
        g = e.get("gate", {})
        if "end_to_end" in g:
            w = g["denoiser_work"]
            click.echo(f"{name} {e['config']}: PSNR {g['end_to_end']['psnr']:.2f} dB, SSIM "
                       f"{g['end_to_end']['ssim']:.4f} (worst of {g['end_to_end']['prompts']}); U-Net batch rows "
                       f"{w['batch_rows']}/{w['plain_batch_rows']}, whole U-Net steps {w['whole_unet_steps']}/"
                       f"{w['whole_unet_steps'] + w['shallow_unet_steps']}")
    click.echo(f"wrote {path}")


def run_optimize(artifact, out, force, **kw) -> Path:
    """apply.optimize with a progress display, then a summary of sizes and gates."""
    from rich.console import Console

    from .apply import optimize as run

    console = Console(stderr=True)
    with console.status("starting") as status:
        def progress(msg):
            console.log(msg)
            status.update(msg)

        path = run(artifact, out=out, force=force, say=progress, **kw)
    from ..runtimes.artifact import load_artifact

    art = load_artifact(path, verify=False)
    for name, c in art.components.items():
        o = c.get("optimize")
        if not o:
            continue
        g = c.get("gate", {})
        gate_txt = ("gate skipped" if g.get("skipped") else
                    f"cosine {g['cosine']:.5f}, rel err {g['rel_err']:.4f}")
        click.echo(f"{name}: {c['precision']}, {o['parent_bytes'] / 1e6:.1f} -> {o['bytes'] / 1e6:.1f} MB "
                   f"({o['size_ratio']:.2f}x), {gate_txt}")
    e2e = art.manifest.get("gate", {}).get("end_to_end")
    if e2e:
        click.echo(f"end to end: PSNR {e2e['psnr']:.2f} dB, SSIM {e2e['ssim']:.4f} (worst of {e2e['prompts']} prompts)")
    click.echo(f"wrote {path}")
    return path
