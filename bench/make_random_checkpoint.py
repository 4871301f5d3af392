"""Write a seeded random .safetensors checkpoint for a model config, one tensor at a time.

    python bench/make_random_checkpoint.py flux-schnell /tmp/flux-schnell-random.safetensors [--dtype bfloat16]

The writer lives in edgegen/export/random_checkpoint.py (the exporter's --random-weights --stream
uses it); this is its command line for the benches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegen.export.random_checkpoint import _ST_DTYPES, make_random_checkpoint, summary_path, write_safetensors_streaming  # noqa: F401


def family_model(name: str, tiny: bool = False):
    """(diffusers class, config) of a family's transformer, from its family file (tiny: the family's tiny config)."""
    import diffusers

    from edgegen.export.families import auraflow, flux_dev, flux_schnell

    fams = {"flux-schnell": flux_schnell.FAMILY, "flux-dev": flux_dev.FAMILY, "auraflow": auraflow.FAMILY}
    if name not in fams:
        sys.exit(f"unknown model {name!r}; known: {', '.join(fams)}")
    d = fams[name].denoiser
    return getattr(diffusers, d.cls), {k: v for k, v in d.get(tiny).items() if not k.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="flux-schnell, flux-dev or auraflow (the transformer)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(_ST_DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="the family's tiny config of the same class")
    args = ap.parse_args()
    cls, cfg = family_model(args.model, args.tiny)
    print(json.dumps(make_random_checkpoint(cls, cfg, args.out, args.dtype, args.seed), indent=2))


if __name__ == "__main__":
    main()
