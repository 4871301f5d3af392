"""The `edgegen` command. Imports stay inside commands so `generate`/`info` work without torch."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import click

from ..optimize.commands import pass_options
from .coreml_cli import coreml_options
from ..runtimes.errors import EdgegenError


class _Group(click.Group):
    """User mistakes end as one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgegenError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=_Group)
@click.version_option(package_name="edgegen")
def main():
    """Export diffusion pipelines to ONNX and run them on edge hardware."""
    warnings.showwarning = _warn_one_line
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@main.command("families")
def families_cmd():
    """List the model families edgegen can export."""
    from .families import ALIASES, families

    for fam in families().values():
        click.echo(f"{fam.name:18s} {fam.description}")
    click.echo("\naliases:")
    for alias, targets in ALIASES.items():
        more = f" ({' or '.join(targets[1:])} when --weights is one)" if len(targets) > 1 else ""
        click.echo(f"{alias:18s} {targets[0]}{more}")


@main.command("export")
@click.argument("family", required=False)
@click.option("--weights", help="Local diffusers folder, single-file .safetensors, or a hub id you have cached "
                               "(default: the family's own hub id).")
@click.option("--random-weights", is_flag=True, help="Real architecture with seeded random weights (speed/memory work).")
@click.option("--tiny", is_flag=True, help="Small config of the same classes (seconds, offline).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact folder to create.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-weights/--tiny.")
@click.option("--trust-pickle", is_flag=True, help="Allow .ckpt/.bin/.pt checkpoints (they can run code when loaded).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default=None,
              help="torch.onnx exporter (default: the family's).")
@click.option("--height", type=int, help="Fixed image height in pixels (static graphs, with --width and --batch).")
@click.option("--width", type=int, help="Fixed image width in pixels.")
@click.option("--batch", help="Images per call: N (fixed) or MIN:MAX.")
@click.option("--min-size", type=int, help="Smallest image side the graphs take (default: the family's).")
@click.option("--max-size", type=int, help="Largest image side the graphs take (default: the family's, "
                                             "within the model's own limit).")
@click.option("--stream", is_flag=True,
              help="Export models of 1B+ parameters (or --stream-components) by streaming their weights from "
                   "safetensors into the graph, traced on meta: FLUX/T5-XXL on a 24 GB machine.")
@click.option("--stream-components", help="Comma-separated components to stream (implies --stream).")
@click.option("--stream-dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16",
              show_default=True, help="Compute and weight dtype of the streamed graphs.")
@pass_options
@coreml_options
def export_cmd(family, weights, random_weights, tiny, out, force, seed, trust_pickle, exporter, height, width, batch,
               min_size, max_size, stream, stream_components, stream_dtype, **kw):
    """Export FAMILY's components to a validated ONNX artifact folder.

    Without FAMILY, --weights must be a diffusers folder (or a cached hub id): the family is
    inferred from its model_index.json and configs, and printed. Widths, depths and head counts
    always come from the weights' own configs.

    With pass flags (--int8, --int4, --fp16, ...) the export is optimized in the same
    command, behind the same quality gate as `edgegen optimize`; only the optimized
    artifact is kept.

    With --target coreml the components become CoreML mlpackages, converted from PyTorch
    (static shapes; --palettize/--int8-weights/--int4-weights compress behind a quality gate)."""
    from .families import choose_family, get_family
    from .sizes import SizeRequest

    sizes = SizeRequest(height, width, batch, min_size, max_size)
    sizes.check()
    if family is None and (tiny or random_weights):
        raise EdgegenError("--tiny and --random-weights build a family's own config: name the family "
                           "(edgegen families lists them)")
    chosen = choose_family(family, weights)  # unknown family fails before anything heavy is imported
    if family is None:
        from .families import families
        from .families.infer import candidates, read_model

        model = read_model(weights)     # None for a single file: diffusers' own rules named its type
        others = candidates(model, families())[1:] if model else []
        also = f" (same architecture: {', '.join(others)}; name one to use its defaults)" if others else ""
        click.echo(f"{weights}: inferred family {chosen}{also}", err=True)
    else:
        if chosen != family:
            click.echo(f"{family}: exporting {chosen}", err=True)
        from .families import families
        from .families.infer import check_named, read_model

        model = read_model(weights) if weights else None
        if model is not None:   # another architecture than the one named: one line, before any loading
            check_named(get_family(chosen), model, families())
    family = chosen
    from ..runtimes.artifact import check_out_path

    check_out_path(out, force)
    from .coreml_cli import take_coreml_options

    coreml = take_coreml_options(kw, exporter)   # --target coreml: PyTorch -> mlpackages (export/coreml.py)
    if coreml is not None:
        from .coreml import import_coremltools, resolve_settings
        from .coreml_cli import run_coreml_export
        from .weights import resolve_source

        settings = resolve_settings(**coreml)   # bad options fail before anything is loaded
        import_coremltools()
        source = resolve_source(weights, random_weights, tiny, seed, trust_pickle, hub_id=get_family(family).hub_id,
                            shipped=get_family(family).shipped_weights())
        return run_coreml_export(family, source, out, force, sizes, settings)
    from ..optimize.commands import parse_pass_options

    opts = parse_pass_options(kw, required=False)  # bad pass flags fail before the export
    from .streamed import StreamRequest

    streaming = None
    if stream or stream_components:
        if opts is not None:
            raise EdgegenError("--stream exports only: optimize the streamed artifact with `edgegen optimize` "
                               "(its bf16 graphs can't run the quality gate's parent pipeline on this CPU)")
        comps = tuple(c.strip() for c in stream_components.split(",") if c.strip()) if stream_components else None
        streaming = StreamRequest(stream_dtype, comps)
    try:
        import torch  # noqa: F401
        import diffusers  # noqa: F401
    except ImportError:
        raise EdgegenError("edgegen export needs the export extras: pip install 'edgegen[export]'") from None
    from .exporter import export
    from .weights import resolve_source

    source = resolve_source(weights, random_weights, tiny, seed, trust_pickle, hub_id=get_family(family).hub_id,
                            shipped=get_family(family).shipped_weights())
    from rich.console import Console

    stage = None
    if opts is not None:  # export beside --out, optimize into --out, drop the export
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    console = Console(stderr=True)
    try:
        with console.status("starting") as status:
            def progress(msg):
                console.log(msg)
                status.update(msg)

            path = export(family, source, stage / "fp32" if stage else out, force=force, progress=progress,
                          exporter=exporter, sizes=sizes, stream=streaming)
        if stage:
            from ..optimize.commands import run_optimize

            run_optimize(path, out, force, **opts)
        else:
            click.echo(f"wrote {path}")
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)


@main.command("generate")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--steps", type=int, help="Denoising steps (default: the family's).")
@click.option("--guidance", type=float, help="Guidance scale (default: the family's).")
@click.option("--height", type=int)
@click.option("--width", type=int)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sampler", help="euler, euler_a, ddim, lcm, dpmpp_2m (default: the family's).")
@click.option("--negative-prompt")
@click.option("--latents", type=click.Path(path_type=Path), help="Initial noise as a .npy file (NCHW float32); "
                                                                   "with --image, the noise mixed into its latents.")
@click.option("--image", "image_path", type=click.Path(path_type=Path),
              help="Start from this image (img2img); --height/--width default to its size, rounded down to one "
                   "the artifact takes.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path),
              help="Inpaint: white pixels of this image (same size as --image) are repainted, black ones kept. "
                   "Needs an inpainting artifact (e.g. edgegen export sd15-inpaint).")
@click.option("--strength", type=float,
              help="How much of the schedule runs from --image, in (0, 1]: low keeps the image, 1 starts from "
                   "noise [default: 0.8; 1.0 with --mask].")
@click.option("--device", help="Backend device: cpu or cuda (onnxruntime), CPU/GPU/NPU (openvino); "
                                "default: the compiled artifact's, else cpu.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt", "tensorrt-rtx"]),
              help="Run an uncompiled artifact on this backend (a compiled one knows its own).")
@click.option("--precision", help="Inference precision for --backend openvino (f32, bf16, f16).")
@click.option("--memory", type=click.Choice(["sequential", "resident"]), default="sequential", show_default=True,
              help="sequential: hold one stage's components at a time (text encoders, denoiser, VAE), so the peak is "
                   "the largest stage; one image loads each component once either way, so it costs no time here.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("image.png"), show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def generate_cmd(artifact, prompt, steps, guidance, height, width, seed, sampler, negative_prompt, latents,
                 image_path, mask_path, strength, device, backend, precision, memory, out, force):
    """Generate an image from PROMPT with an exported ARTIFACT (no torch needed)."""
    import numpy as np
    from rich.progress import Progress

    from ..runtimes import Pipeline
    from ..runtimes.artifact import sha256_file
    from ..runtimes.image import load_image, save_png
    from ..runtimes.pipeline import IMG2IMG_STRENGTH, INPAINT_STRENGTH

    if out.exists() and not force:
        raise EdgegenError(f"{out} already exists; pass --force to overwrite it")
    if out.suffix.lower() != ".png":
        raise EdgegenError(f"--out {out}: generate writes PNG files (use a .png name)")
    noise = None
    if latents is not None:
        try:
            noise = np.load(latents)
        except (OSError, ValueError) as e:
            raise EdgegenError(f"--latents {latents}: cannot read a .npy array ({e})") from None
    init = None if image_path is None else load_image(image_path, "--image")
    mask = None if mask_path is None else load_image(mask_path, "--mask")
    pipe = Pipeline.load(artifact, device=device, backend=backend, precision=precision, memory=memory)
    d = pipe.defaults
    steps = d["steps"] if steps is None else steps
    guidance = d["guidance"] if guidance is None else guidance
    sampler = sampler or d["sampler"]
    with Progress(transient=True) as bar:
        task = bar.add_task("denoising", total=steps)
        # img2img runs only the steps its strength keeps: the callback's n.
        image = pipe(prompt, steps=steps, guidance=guidance, height=height, width=width, seed=seed, sampler=sampler,
                     latents=noise, negative_prompt=negative_prompt, image=init, mask=mask, strength=strength,
                     callback=lambda i, n: bar.update(task, completed=i + 1, total=n))
    meta = {"prompt": prompt, "seed": str(seed), "steps": str(steps), "guidance": str(guidance), "sampler": sampler,
            "family": pipe.artifact.family, "backend": pipe.backend.name, "artifact_sha256": sha256_file(pipe.artifact.root / "manifest.json"),
            "size": f"{image.shape[1]}x{image.shape[0]}"}
    if negative_prompt:
        meta["negative_prompt"] = negative_prompt
    if latents is not None:
        meta["latents"] = str(latents)
    if init is not None:
        default = INPAINT_STRENGTH if mask is not None else IMG2IMG_STRENGTH
        meta["image"], meta["strength"] = str(image_path), str(default if strength is None else strength)
    if mask is not None:
        meta["mask"] = str(mask_path)
    save_png(image, out, meta)
    click.echo(f"wrote {out}")


@main.command("info")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and a summary as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip checking file digests.")
def info_cmd(artifact, as_json, no_verify):
    """Show what an artifact holds: components, IO, sizes, validation."""
    from ..runtimes.artifact import load_artifact
    from .info import render_info, summary

    art = load_artifact(artifact, verify=not no_verify)
    if as_json:
        click.echo(json.dumps({"summary": summary(art), "manifest": art.manifest}, indent=2))
    else:
        render_info(art)


def _register() -> None:
    """Commands defined beside the code they drive."""
    from ..bench.harness import bench_cmd
    from ..optimize.commands import optimize
    from ..profiles.commands import plan_cmd, profiles_cmd

    main.add_command(optimize, "optimize")
    main.add_command(profiles_cmd, "profiles")
    main.add_command(plan_cmd, "plan")
    main.add_command(bench_cmd, "bench")
    from ..runtimes.compile import compile_command

    main.add_command(compile_command(), "compile")


_register()

if __name__ == "__main__":
    main()
