"""SANA / SANA-Sprint: Gemma-2 hidden states of an instruction-prefixed prompt, a linear-attention DiT
over the 32x DC-AE latent, flow DPM-Solver with CFG (SANA) or sCM with a guidance embedding (Sprint).

Text: SanaPipeline lowercases and strips the prompt, prepends its fixed "complex human instruction",
tokenizes to (instruction tokens + 300 - 2) tokens padded on the right, runs Gemma with the attention
mask and keeps token 0 plus the last 299 (hidden states and mask). The negative prompt ("") gets no
instruction and is tokenized to 300 tokens. The recipe carries the instruction text and both lengths,
so the runtime needs no diffusers. The Gemma graph takes any sequence length (dynamic "txt_seq" up to
the instruction-prefixed length); the transformer takes up to 300 text tokens with their mask.

Exporters: Gemma with TorchScript (dynamic length works and is ~10x faster than dynamo; its check
feeds all-ones masks, right-padded ones are compared with diffusers in tests/test_sana.py); the
transformer and DC-AE with dynamo (TorchScript cannot type DC-AE's movedim), onnx_optimize=False:
their linear attention divides by a sum + 1e-15 that the dynamo optimizer drops (0/0 -> NaN).

DC-AE: decode(z).sample and encode(x).latent (a plain latent, no distribution, no quant convs).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ...runtimes.iospec import Dim, IOSpec, TensorSpec
from ..components import Component, TupleOut, base_recipe, batch_dim, count_params, latent_dims, vae_scale_factor
from ..family import Family
from ..sizes import Limits

MIN_TEXT_SEQ = 8  # shortest text the Gemma graph is exported for (the runtime feeds 300 and the prefixed length)


def instruction(pipe) -> str:
    """The pipeline's default complex_human_instruction, joined as it joins it."""
    default = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    return "\n".join(default) if default else ""


def prompt_length(pipe, max_sequence_length: int) -> int:
    """Tokens the instruction-prefixed prompt is padded/truncated to (SanaPipeline's max_length_all)."""
    text = instruction(pipe)
    if not text:
        return max_sequence_length
    return len(pipe.tokenizer.encode(text)) + max_sequence_length - 2


def gemma_encoder(te, model: nn.Module, max_len: int) -> Component:
    """Gemma2Model: token ids + attention mask -> last hidden states, any length up to max_len."""
    cfg = model.config
    dims = {"batch": batch_dim(), "txt_seq": Dim("txt_seq", MIN_TEXT_SEQ, te.max_length, max_len)}
    io = IOSpec((TensorSpec("input_ids", "int64", ("batch", "txt_seq"), 0, cfg.vocab_size - 1),
                 TensorSpec("attention_mask", "int64", ("batch", "txt_seq"), 1, 1)),
                (TensorSpec("hidden_states", "float32", ("batch", "txt_seq", cfg.hidden_size)),), dims)

    def fn(m, input_ids, attention_mask):
        return (m(input_ids, attention_mask=attention_mask)[0],)

    return Component(te.component, TupleOut(model, fn).eval(), io, count_params(model))


def transformer(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int, txt_len: int,
                timestep_high: float) -> Component:
    cfg = model.config
    dims = {"batch": batch_dim(), "txt_seq": Dim("txt_seq", 1, txt_len, txt_len),
            **latent_dims(resolution, vae_scale, cfg.patch_size)}
    inputs = [
        TensorSpec("hidden_states", "float32", ("batch", cfg.in_channels, "latent_height", "latent_width")),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "txt_seq", cfg.caption_channels)),
        # 1 = token, 0 = padding; float so that every denoiser input is float32 (the transformer
        # turns it into a (1 - mask) * -10000 bias in the hidden dtype either way).
        TensorSpec("encoder_attention_mask", "float32", ("batch", "txt_seq"), 0, 1),
        TensorSpec("timestep", "float32", ("batch",), 0, timestep_high),
    ]
    if cfg.guidance_embeds:
        inputs.append(TensorSpec("guidance", "float32", ("batch",), 0, 1))
    io = IOSpec(tuple(inputs), (TensorSpec("noise_pred", "float32",
                                           ("batch", cfg.out_channels, "latent_height", "latent_width")),), dims)

    def fn(m, hidden, ehs, mask, timestep, guidance=None):
        # torch.onnx traces size-obliviously: without these, each input's batch is its own symbol and
        # the cross-attention mask's broadcast dims cannot be proven equal (export fails).
        for t in (ehs, mask, timestep) + (() if guidance is None else (guidance,)):
            torch._check(t.shape[0] == hidden.shape[0])
        torch._check(mask.shape[1] == ehs.shape[1])
        return (m(hidden, encoder_hidden_states=ehs, encoder_attention_mask=mask, timestep=timestep,
                  guidance=guidance, return_dict=False)[0],)

    comp = Component("transformer", TupleOut(model, fn).eval(), io, count_params(model), exporter="dynamo")
    comp.onnx_optimize = False
    return comp


def dc_decoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    dims = {"batch": batch_dim(), **latent_dims(resolution, vae_scale, 1)}
    image = ("batch", 3, f"{vae_scale}*latent_height", f"{vae_scale}*latent_width")
    io = IOSpec((TensorSpec("latent", "float32", ("batch", c, "latent_height", "latent_width"), -4, 4),),
                (TensorSpec("image", "float32", image),), dims)
    comp = Component("vae_decoder", TupleOut(model, lambda m, z: (m.decode(z, return_dict=False)[0],)).eval(),
                     io, count_params(model.decoder), exporter="dynamo")
    comp.onnx_optimize = False
    return comp


def dc_encoder(model: nn.Module, resolution: tuple[int, int, int], vae_scale: int) -> Component:
    c = model.config.latent_channels
    lo, opt, hi = resolution
    dims = {"batch": batch_dim(), "height": Dim("height", lo, opt, hi, vae_scale),
            "width": Dim("width", lo, opt, hi, vae_scale)}
    io = IOSpec((TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
                (TensorSpec("latent", "float32", ("batch", c, f"height/{vae_scale}", f"width/{vae_scale}")),), dims)
    comp = Component("vae_encoder", TupleOut(model, lambda m, x: (m.encode(x, return_dict=False)[0],)).eval(),
                     io, count_params(model.encoder), exporter="dynamo")
    comp.onnx_optimize = False
    return comp


def _sprint(pipe) -> bool:
    return bool(pipe.transformer.config.guidance_embeds)


def components(family: Family, pipe, resolution: tuple[int, int, int]) -> list[Component]:
    (te,) = family.text_encoders
    scale = vae_scale_factor(pipe.vae)
    return [
        gemma_encoder(te, pipe.text_encoder, prompt_length(pipe, te.max_length)),
        # SanaPipeline gives the timestep (int(sigma * 1000) * timestep_scale); Sprint the flow time in [0, 1].
        transformer(pipe.transformer, resolution, scale, te.max_length,
                    1.0 if _sprint(pipe) else 1000 * pipe.transformer.config.timestep_scale),
        dc_decoder(pipe.vae, resolution, scale),
        dc_encoder(pipe.vae, resolution, scale),
    ]


def size_limits(pipe) -> Limits:
    # Sana 1.0 has no position embedding (interpolation_scale None) or sin-cos ones computed per size.
    return Limits(vae_scale_factor(pipe.vae) * pipe.transformer.config.patch_size)


def recipe(family: Family, pipe, resolution: tuple[int, int, int]) -> dict:
    (te,) = family.text_encoders
    cfg = pipe.transformer.config
    sprint = _sprint(pipe)
    return {**base_recipe("sana", family, pipe, resolution, size_limits(pipe).multiple),
            "patch": cfg.patch_size,
            # SanaPipeline multiplies the sampler's timestep by it; SanaSprintPipeline does not.
            "timestep_scale": 1.0 if sprint else float(cfg.timestep_scale),
            "guidance_embeds_scale": float(cfg.guidance_embeds_scale) if sprint else None,
            # Prompt text handling (clean_caption=False: lowercase + strip, instruction in front).
            "instruction": instruction(pipe),
            "max_sequence_length": te.max_length,
            "prompt_length": prompt_length(pipe, te.max_length),
            "negative_prompt": "" if family.guidance_mode == "cfg" else None}
