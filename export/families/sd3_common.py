"""Text encoders shared by SD3 and SD3.5: CLIP-L and OpenCLIP-bigG (penultimate + pooled), T5-XXL."""
from ..family import TextEncoderDef
from .parts import CLIP_L, CLIP_TINY, OPENCLIP_BIGG
from .t5 import T5_TINY, T5_XXL

_PROJ = {"architectures": ["CLIPTextModelWithProjection"]}
# The CLIP hidden states (768 + 1280 = 2048 wide) are zero-padded to T5's 4096 and joined along
# the sequence, so tiny T5 must be at least as wide as the two tiny CLIPs together (64).
TEXT_ENCODERS = (
    TextEncoderDef("text_encoder", "tokenizer", "CLIPTextModelWithProjection", {**CLIP_L, **_PROJ},
                   {**CLIP_TINY, **_PROJ}, hidden="penultimate", pooled="text_embeds"),
    TextEncoderDef("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG,
                   {**CLIP_TINY, **_PROJ, "hidden_act": "gelu"}, "!", hidden="penultimate", pooled="text_embeds"),
    TextEncoderDef("text_encoder_3", "tokenizer_3", "T5EncoderModel", T5_XXL, {**T5_TINY, "d_model": 64},
                   tokenizer_kind="t5", max_length=256),
)
