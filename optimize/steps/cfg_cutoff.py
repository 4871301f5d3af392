"""cfg-cutoff: classifier-free guidance for the first part of the schedule only.

Late steps change fine detail, where the guided and unguided predictions agree most; running
their conditional half alone halves the U-Net batch there. The index rule is diffusers'
SDCFGCutoffCallback: CFG through step int(steps * ratio), the conditional half after it.
"""
from __future__ import annotations

from ...runtimes.errors import EdgegenError
from .registry import PipelineOption, register


@register
class CfgCutoff(PipelineOption):
    name = "cfg-cutoff"
    defaults = {"ratio": 0.4}
    psnr, ssim = 20.0, 0.7
    help = "CFG through step int(steps*ratio), the conditional half alone after it (diffusers' SDCFGCutoffCallback)."

    def check_config(self):
        r = self.config["ratio"]
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise EdgegenError(f"cfg-cutoff: ratio must be a number in [0, 1), got {r!r}")

    def applicable(self, art):
        r = art.manifest["pipeline"]
        if r.get("guidance") != "cfg":
            return f"its pipeline has no classifier-free guidance (guidance: {r.get('guidance')})"
        if r.get("kind") != "unet":
            return f"the {r.get('kind')} runtime loop does not implement it yet (the U-Net loop does)"
        return None
