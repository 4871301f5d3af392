"""The `edgegen export` options of the CoreML target, and its dispatch.

Kept beside export/cli.py so the export command only gains a decorator and one call. Values are
checked here (not by click.Choice) so a bad one is edgegen's one-line error with exit code 2.
"""
from __future__ import annotations

import click

from ..runtimes.errors import EdgegenError

# Flags of the ONNX optimize passes that mean nothing for CoreML; the CoreML compressions are
# --palettize, --int8-weights (shared with the ONNX pass of that name) and --int4-weights.
ONNX_ONLY = ("fp16", "bf16", "int8", "int8_dynamic", "fp8", "int4", "fuse")


def coreml_options(f):
    opts = [
        click.option("--target", "target", default="onnx", show_default=True, metavar="onnx|coreml",
                     help="onnx (graphs for edgegen's runtimes) or coreml (mlpackages converted from PyTorch; "
                          "there --int8-weights is int8 per output channel)."),
        click.option("--device", "coreml_device", metavar="PROFILE",
                     help="CoreML: device profile whose [coreml] table sets deployment target, compute units "
                          "and attention (edgegen profiles)."),
        click.option("--compute-units", "compute_units", metavar="UNITS",
                     help="CoreML: all, cpu-only, cpu-and-gpu or cpu-and-ne [default: the profile's, else all]."),
        click.option("--deployment-target", "deployment_target", metavar="OS",
                     help="CoreML: minimum OS, e.g. macOS14, iOS17 [default: the profile's, else macOS14]."),
        click.option("--attention", "attention", metavar="IMPL",
                     help="CoreML U-Net attention: original, split-einsum or split-einsum-v2 (Neural Engine "
                          "layout) [default: the profile's, else original]."),
        click.option("--precision", "coreml_precision", metavar="P",
                     help="CoreML compute precision: fp16 (default) or fp32."),
        click.option("--palettize", "palettize", type=int, metavar="BITS",
                     help="CoreML: k-means palettize denoiser and text encoder weights to 4, 6 or 8 bits (gated)."),
        click.option("--int4-weights", "int4_weights", is_flag=True,
                     help="CoreML: int4 blockwise weight-only quantization (macOS15/iOS18+; gated)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def take_coreml_options(kw: dict, exporter: str | None = None) -> dict | None:
    """Pop the CoreML options from the export command's kwargs. None for --target onnx (then
    giving a CoreML-only option is an error); else the resolve_settings() arguments, after
    refusing the options that only mean something for ONNX."""
    target = kw.pop("target")
    mine = {k: kw.pop(k) for k in ("coreml_device", "compute_units", "deployment_target", "attention",
                                   "coreml_precision", "palettize", "int4_weights")}
    if target not in ("onnx", "coreml"):
        raise EdgegenError(f"--target {target}: known: onnx, coreml (compile targets: edgegen compile --target)")
    if target == "onnx":
        given = [k for k, v in mine.items() if v not in (None, False)]
        if given:
            flag = {"coreml_device": "device", "coreml_precision": "precision"}.get(given[0], given[0])
            raise EdgegenError(f"--{flag.replace('_', '-')} applies to --target coreml")
        return None
    onnx = [k for k in ONNX_ONLY if kw.get(f"flag_{k}")] + [k for k in ("prune", "extra") if kw.get(k)]
    if onnx:
        name = {"extra": "pass"}.get(onnx[0], onnx[0]).replace("_", "-")
        raise EdgegenError(f"--{name} is an ONNX optimize pass; CoreML compresses with --palettize, "
                           f"--int8-weights or --int4-weights")
    onnx = [k for k, v in (("calibration_method", kw.get("calibration_method")), ("int4_algo", kw.get("int4_algo")),
                           ("exporter", exporter)) if v]
    if onnx:
        raise EdgegenError(f"--{onnx[0].replace('_', '-')} applies to ONNX exports, not --target coreml")
    from ..optimize.commands import parse_thresholds

    return {"device": mine["coreml_device"], "compute_units": mine["compute_units"],
            "deployment_target": mine["deployment_target"], "attention": mine["attention"],
            "precision": mine["coreml_precision"] or "fp16", "palettize": mine["palettize"],
            "int8_weights": bool(kw.get("flag_int8_weights")), "int4_weights": mine["int4_weights"],
            "gate": not kw.get("no_gate"), "thresholds": parse_thresholds(kw.get("threshold") or ()),
            "gate_prompts": kw.get("gate_prompts") or 2}


def run_coreml_export(family: str, source, out, force: bool, sizes, settings) -> None:
    from rich.console import Console

    from .coreml import export_coreml

    console = Console(stderr=True)
    with console.status("starting") as status:
        def progress(msg):
            console.log(msg)
            status.update(msg)

        path = export_coreml(family, source, out, settings, sizes=sizes, force=force, progress=progress)
    from ..runtimes.artifact import load_artifact

    gate = (load_artifact(path, verify=False).manifest["target"].get("compression") or {}).get("gate") or {}
    e2e = gate.get("end_to_end")
    if e2e:
        click.echo(f"gate: PSNR {e2e['psnr']:.2f} dB, SSIM {e2e['ssim']:.4f} against uncompressed PyTorch "
                   f"(worst of {e2e['prompts']} prompts)")
    click.echo(f"wrote {path}")
