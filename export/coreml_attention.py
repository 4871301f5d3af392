"""Neural-Engine-friendly attention for the U-Net, as a diffusers attention processor (torch is
imported where it is used, so the CLI can check --attention without it).

Facts carried from Apple's ml-stable-diffusion (python_coreml_stable_diffusion/attention.py and
unet.py, HEAD e12202c): the Neural Engine prefers tensors in a (batch, channels, 1, sequence)
layout with projections as 1x1 convolutions, and attention computed one head at a time with
einsums ("split einsum") instead of one batched matmul over a (batch*heads) dimension, whose
reshapes and transposes the ANE handles badly. SPLIT_EINSUM_V2 further cuts the query sequence
into chunks of 512 and falls back to SPLIT_EINSUM when the query is shorter than that. ORIGINAL
(diffusers' own scaled_dot_product_attention) is Apple's choice for the GPU on Macs.

Apple forks the whole UNet for this; here only the attention computation changes: the processor
is installed on every Attention module of the unmodified diffusers UNet at conversion time and
the previous processors are restored afterwards. Projection weights are the Linear layers' own
tensors, viewed as 1x1 kernels, so torch-side compression metadata still names them.
"""
from __future__ import annotations

from contextlib import contextmanager

from ..runtimes.errors import EdgegenError

ATTENTIONS = ("original", "split-einsum", "split-einsum-v2")
CHUNK = 512   # SPLIT_EINSUM_V2's query chunk


def _conv1x1(linear, x):
    """`linear` applied over the channel axis of a (B, C, 1, S) tensor, as the ANE layout wants."""
    import torch.nn.functional as F

    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def split_einsum(q, k, v, heads: int, mask=None, chunk: int | None = None):
    """Attention per head on (B, C, 1, S) tensors; `mask` is additive, (B, heads, Sq|1, Sk) or None.
    With `chunk`, queries are processed `chunk` positions at a time when there are at least that many."""
    import torch

    dim_head = q.shape[1] // heads
    scale = dim_head ** -0.5
    k = k.transpose(1, 3)                                           # (B, Sk, 1, C)
    sq = q.shape[3]
    n_chunks = sq // chunk if chunk else 0
    bounds = [(i * chunk, (i + 1) * chunk) for i in range(n_chunks)] if n_chunks else [(0, sq)]
    if n_chunks and bounds[-1][1] < sq:   # Apple's chunks cover multiples of 512; keep a tail exact
        bounds.append((bounds[-1][1], sq))
    out = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        qh, kh, vh = q[:, sl], k[:, :, :, sl], v[:, sl]
        m = None if mask is None else mask[:, h].transpose(1, 2).unsqueeze(2)   # (B, Sk, 1, Sq|1)
        parts = []
        for lo, hi in bounds:
            w = torch.einsum("bchq,bkhc->bkhq", qh[..., lo:hi], kh) * scale    # (B, Sk, 1, q)
            if m is not None:
                w = w + (m if m.shape[3] == 1 else m[..., lo:hi])
            w = w.softmax(dim=1)
            parts.append(torch.einsum("bkhq,bchk->bchq", w, vh))              # (B, dim_head, 1, q)
        out.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3))
    return torch.cat(out, dim=1)


class SplitEinsumProcessor:
    """diffusers' AttnProcessor2_0 with the attention core in the ANE layout (see module doc)."""

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_q, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            if encoder_hidden_states is None:
                context = hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        x = hidden_states.transpose(1, 2).unsqueeze(2)           # (B, C, 1, Sq)
        ctx = x if context is hidden_states else context.transpose(1, 2).unsqueeze(2)
        q, k, v = _conv1x1(attn.to_q, x), _conv1x1(attn.to_k, ctx), _conv1x1(attn.to_v, ctx)
        out = split_einsum(q, k, v, attn.heads, mask, self.chunk)
        out = _conv1x1(attn.to_out[0], out)
        out = attn.to_out[1](out)                                # dropout: identity in eval
        out = out.squeeze(2).transpose(1, 2)                     # (B, Sq, C)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _unsupported(name: str, attn) -> str | None:
    """What this processor does not implement on one Attention module, or None."""
    checks = (("added key/value projections", getattr(attn, "added_kv_proj_dim", None) is not None),
              ("query/key norms", attn.norm_q is not None or attn.norm_k is not None),
              ("grouped key/value heads", attn.to_k is None or attn.to_k.out_features != attn.to_q.out_features),
              ("causal masking", getattr(attn, "is_causal", False)),
              ("fused projections", getattr(attn, "fused_projections", False)))
    bad = [what for what, hit in checks if hit]
    return f"{name} uses {bad[0]}" if bad else None


@contextmanager
def attention_processors(model, attention: str):
    """Within the block, every Attention module of `model` computes `attention`; the previous
    processors come back afterwards, even on error."""
    if attention not in ATTENTIONS:
        raise EdgegenError(f"--attention {attention}: known: {', '.join(ATTENTIONS)}")
    if attention == "original":
        yield model
        return
    if not hasattr(model, "set_attn_processor"):
        raise EdgegenError(f"--attention {attention} applies to U-Net denoisers (diffusers UNet2DConditionModel), "
                           f"not {type(model).__name__}")
    from diffusers.models.attention_processor import Attention

    for name, mod in model.named_modules():
        if isinstance(mod, Attention):
            problem = _unsupported(name, mod)
            if problem:
                raise EdgegenError(f"--attention {attention}: {type(model).__name__} attention {problem}, "
                                   f"which the split-einsum processor does not implement; use --attention original")
    before = model.attn_processors
    model.set_attn_processor(SplitEinsumProcessor(CHUNK if attention == "split-einsum-v2" else None))
    try:
        yield model
    finally:
        model.set_attn_processor(before)
