"""Stable Diffusion 3.5 Large Turbo (stabilityai/stable-diffusion-3.5-large-turbo).

The released transformer/config.json is SD3.5 Large's (ADD-distilled weights,
same architecture); it runs 4 steps with guidance 0, so there is no CFG batch.
"""
from dataclasses import replace

from .sd35_large import MODEL as LARGE

MODEL = replace(LARGE, name="sd35-large-turbo", title="SD3.5 Large Turbo", cfg=False)
