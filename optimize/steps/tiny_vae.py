"""tiny-vae: decode with a TAESD-style tiny VAE (diffusers' AutoencoderTiny) instead of the full one.

An explicit choice, never a default: the tiny decoder is a different, smaller model (at 512 px
SD's decoder is about 49M parameters with attention at 64x64 latents, TAESD's 1.2M and
convolutions only), so the images change, by how much is what the gate measures against the
parent's images from the same latents. The VAE encoder (img2img, inpainting) stays the full one:
it runs once per image and gives the latents the denoiser was trained on.

The new decoder is exported from PyTorch (export/tiny_vae.py) with the replaced decoder's IOSpec
and validated against PyTorch like any export; its manifest entry records the weights, the
parameter counts of both decoders and that validation.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ...runtimes.artifact import digest_files
from ...runtimes.errors import EdgegenError
from .registry import PipelineOption, register


@register
class TinyVae(PipelineOption):
    name = "tiny-vae"
    # weights: "" for the family's own (edgegen-shapes ships one; others name a TAESD hub id),
    # a diffusers AutoencoderTiny folder, a hub id, or "random" (speed and memory only).
    defaults = {"weights": "", "seed": 0}
    # TAESD is lossy against its VAE by design; the limits catch a decoder that does not know the
    # latent space (random weights: 2.8 dB on edgegen-shapes, 4.5 dB on tiny FLUX), not softer detail.
    psnr, ssim = 20.0, 0.7
    help = "Decode with a TAESD tiny VAE (weights=DIR|hub id|random)."

    def check_config(self):
        if not isinstance(self.config["weights"], str):
            raise EdgegenError(f"tiny-vae: weights must be a folder, a hub id or random, got {self.config['weights']!r}")
        if not isinstance(self.config["seed"], int):
            raise EdgegenError(f"tiny-vae: seed must be a whole number, got {self.config['seed']!r}")

    def weights(self, art) -> str:
        if self.config["weights"]:
            return self.config["weights"]
        from ...export.families import get_family

        src = get_family(art.family).tiny_vae_source()
        if not src:
            raise EdgegenError(f"tiny-vae: {art.family} has no known tiny VAE; pass weights=DIR (a diffusers "
                               "AutoencoderTiny folder trained on its latent space) or weights=random")
        return src

    def applicable(self, art):
        r = art.manifest["pipeline"]
        dec = r.get("vae_decoder")
        if dec not in art.components:
            return "it has no VAE decoder"
        if not str(art.components[dec]["graph"]).endswith(".onnx"):
            return "its VAE decoder is not an ONNX graph"
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            return "the tiny VAE is exported from PyTorch: pip install 'edgegen[export]'"
        from ...export.tiny_vae import check_fits, load_tiny_vae

        # Loaded and checked here, before the gate's parent images are made: a wrong tiny VAE
        # fails at once.
        self._weights = self.weights(art)
        self._model = load_tiny_vae(self._weights, r, art.manifest.get("size") == "tiny", self.config["seed"])
        check_fits(self._model, r, self._weights)
        return None

    def build(self, art, tmp: Path, manifest: dict, say) -> dict:
        from ...export.onnx_export import export_component, validate_component
        from ...export.tiny_vae import decoder_component

        r = manifest["pipeline"]
        dec = r["vae_decoder"]
        weights = self._weights
        comp = decoder_component(self._model, r, art.io(dec), dec)
        say(f"tiny-vae: exporting {weights} ({comp.params / 1e6:.2f}M decoder params)")
        # The parent's files are hard links here: remove them, never write through them.
        shutil.rmtree(tmp / dec)
        t0 = time.time()
        files = export_component(comp, tmp / dec)
        validation = validate_component(comp, tmp / dec / "model.onnx")
        old = manifest["components"][dec]
        manifest["components"][dec] = {
            "graph": f"{dec}/model.onnx", "files": digest_files(tmp, [f"{dec}/{f}" for f in files]),
            "io": old["io"], "params": comp.params, "precision": "fp32", "exporter": "torchscript",
            "export_seconds": round(time.time() - t0, 2), "validation": validation,
            "replaces": {"class": "AutoencoderTiny", "parent_params": old.get("params"),
                         "parent_precision": old.get("precision")},
        }
        return {"weights": weights if weights == "random" or not Path(weights).is_dir() else str(Path(weights).resolve()),
                "random_weights": weights == "random", "component": dec,
                "params": comp.params, "parent_params": old.get("params")}
