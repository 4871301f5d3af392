"""FLUX.1 [schnell] (black-forest-labs/FLUX.1-schnell), timestep-distilled, 1-4 steps.

Released transformer/config.json is FLUX.1 [dev]'s without the guidance embedding
(guidance_embeds false); the pipeline runs T5 at 256 tokens. Shadowed by the export family of the same name
where it exists.
"""
from . import Model
from .flux_dev import TRANSFORMER as DEV, flux_parts

TRANSFORMER = {**DEV, "guidance_embeds": False}

MODEL = Model(name="flux-schnell", title="FLUX.1 schnell", parts=flux_parts(TRANSFORMER, 256),
              size=1024, cfg=False, text_tokens=256)
