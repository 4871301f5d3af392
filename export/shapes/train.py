"""Train the shipped `edgegen-shapes` pipeline on CPU: a real StableDiffusionPipeline
(AutoencoderKL, UNet2DConditionModel, CLIPTextModel with the CLIP BPE tokenizer, the SD
scheduler) at tiny widths, on the procedural shapes data.

    python -m edgegen.export.shapes.train --out export/assets/edgegen-shapes [--seed 0]

1. VAE on the images (L1 + a small KL, as the SD VAE's objective without its GAN term).
2. Latents of the whole set from the trained encoder; the scaling factor is 1/std of them,
   as SD's 0.18215 was derived.
3. UNet and text encoder jointly on (latent, caption) with the family scheduler's objective
   (v-prediction) and betas, min-SNR-5 weighted, 10% empty captions so classifier-free guidance works;
   the saved weights are their EMA. `--resume` continues from a saved pipeline.
Writes with `save_pretrained` (safetensors, fp16 to keep the package small) and a
train.json with the command, seed, wall times and final losses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..families import get_family
from . import data

FAMILY = get_family("edgegen-shapes")    # the one statement of the configs trained here
TEXT = FAMILY.text_encoders[0].config


def _cfg(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _log(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _reconstruction(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(y, target) + F.mse_loss(y, target)


def _update(opt, sched, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def train_vae(images: torch.Tensor, steps: int, batch: int, seed: int, t0: float, lr: float,
              resume: Path | None, device: str):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = (AutoencoderKL.from_pretrained(resume / "vae", torch_dtype=torch.float32) if resume
           else AutoencoderKL(**_cfg(FAMILY.vae.config))).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    loss = rec = None
    for step in range(steps):
        x = images[torch.randint(len(images), (batch,), generator=g)].to(device)
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample(generator=g)).sample
        rec = _reconstruction(y, x)
        _update(opt, sched, rec + 1e-6 * post.kl().mean())
        if step % 50 == 0 or step == steps - 1:
            _log(t0, f"vae {step}/{steps}: reconstruction {rec.item():.4f}")
    return vae.cpu().eval(), float(rec.item())


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


TINY_VAE_WIDTH = 32   # a third of the shipped decoder's parameters (122K against 385K)


def train_tiny_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int, t0: float, lr: float, device: str):
    """Distil a TAESD (diffusers' AutoencoderTiny) from the trained VAE, as TAESD was distilled
    from SD's: the decoder learns the full decoder's image for the same U-Net-space latents (the
    gate compares it with that image, not the training picture), the encoder the full encoder's
    latents. The teacher's latents and images are computed once (its posterior is nearly a point:
    the VAE was trained with a 1e-6 KL weight); no adversarial term."""
    from diffusers import AutoencoderTiny

    from ..tiny_vae import taesd_config

    torch.manual_seed(seed + 2)
    sf = vae.config.scaling_factor
    cfg = taesd_config(vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1), False,
                       TINY_VAE_WIDTH)
    tiny = AutoencoderTiny(**cfg).to(device).train()
    vae = vae.to(device).eval()
    with torch.no_grad():
        latents = encode_all(vae, images.to(device)) * sf
        teacher = torch.cat([vae.decode(latents[i:i + 256] / sf).sample.clamp(-1, 1)
                             for i in range(0, len(latents), 256)])
    _log(t0, f"teacher latents and images for {len(images)} images")
    opt = torch.optim.AdamW(tiny.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed + 2)
    dec = enc = None
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g).to(device)
        y = tiny.decode(latents[idx]).sample
        dec = _reconstruction(y, teacher[idx])
        enc = F.mse_loss(tiny.encode(images[idx].to(device)).latents, latents[idx])
        _update(opt, sched, dec + enc)
        if step % 250 == 0 or step == steps - 1:
            _log(t0, f"tiny vae {step}/{steps}: decoder {dec.item():.4f}, encoder {enc.item():.4f}")
    return tiny.cpu().eval(), float(dec.item()), float(enc.item())


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_unet(latents: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor, steps: int, batch: int, seed: int,
               t0: float, scheduler, lr: float, resume: Path | None, device: str, frozen_text: bool):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 1)
    if resume:
        unet = UNet2DConditionModel.from_pretrained(resume / "unet", torch_dtype=torch.float32)
        text = CLIPTextModel.from_pretrained(resume / "text_encoder", torch_dtype=torch.float32)
    else:
        unet, text = UNet2DConditionModel(**_cfg(FAMILY.denoiser.config)), CLIPTextModel(CLIPTextConfig(**TEXT))
    unet, text = unet.to(device).train(), text.to(device).train()
    text.requires_grad_(not frozen_text)
    params = [*unet.parameters(), *([] if frozen_text else text.parameters())]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    # The saved weights are an exponential moving average of the trained ones: for small diffusion
    # models that is worth thousands of steps of sample quality (as in DDPM and every diffusers
    # training example).
    from diffusers.training_utils import EMAModel

    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=2 / 3)
    acp = scheduler.alphas_cumprod.to(device)
    # Min-SNR-5 loss weights (Hang et al. 2023): the nearly clean timesteps stop dominating the
    # loss, and the noisy ones, where layout and shape are decided, get their share.
    snr = acp / (1 - acp)
    v_pred = FAMILY.scheduler["prediction_type"] == "v_prediction"
    weight = snr.clamp(max=5.0) / (snr + 1 if v_pred else snr)
    latents, ids, empty = latents.to(device), ids.to(device), empty.to(device)
    g = torch.Generator().manual_seed(seed + 1)
    avg_loss = None
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=g).to(device)
        x0, tok = latents[idx], ids[idx].clone()
        tok[(torch.rand(batch, generator=g) < 0.1).to(device)] = empty     # unconditional rows, for CFG
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, len(acp), (batch,), generator=g).to(device)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text(tok).last_hidden_state
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
        err = (unet(xt, t, encoder_hidden_states=cond).sample - target).pow(2).mean(dim=(1, 2, 3))
        loss = (weight[t] * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        avg_loss = loss.item() if avg_loss is None else 0.98 * avg_loss + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            _log(t0, f"unet {step}/{steps}: loss {avg_loss:.4f}")
    ema.copy_to(params)
    return unet.cpu().eval(), text.cpu().eval(), float(avg_loss)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--unet-steps", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--resume", type=Path, help="start from this pipeline folder's weights (e.g. the shipped one) "
                    "instead of random init; pass a lower --vae-lr/--unet-lr")
    ap.add_argument("--frozen-text", action="store_true", help="keep the text encoder at its (random or resumed) "
                    "weights: the frozen-vs-joint comparison")
    ap.add_argument("--device", default="cpu", help="torch device to train on (e.g. cuda on a lent GPU)")
    ap.add_argument("--stage", choices=("vae", "unet", "all", "tiny-vae"), default="all",
                    help="vae: train and save the VAE alone (to --out/vae); unet: reuse that VAE; tiny-vae: distil "
                         "a TAESD from --out's VAE into --out/tiny_vae (`--pipeline-option tiny-vae` ships it)")
    ap.add_argument("--tiny-vae-steps", type=int, default=2500)
    ap.add_argument("--tiny-vae-lr", type=float, default=2e-3)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)   # tiny gradients late in training otherwise slow every CPU op down
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from ..clip_vocab import write_clip_tokenizer

    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    record_path = a.out / "train.json"
    keep = (a.stage in ("unet", "tiny-vae") or a.resume) and record_path.exists()
    record = json.loads(record_path.read_text()) if keep else {}
    record.setdefault("commands", []).append("python -m edgegen.export.shapes.train " + " ".join(argv or sys.argv[1:]))
    if a.stage != "tiny-vae":    # the pipeline's own run; a tiny-VAE run records these in its entry
        record.update(seed=a.seed, images=a.images, torch_threads=torch.get_num_threads())
    images_np, captions, _ = data.dataset(a.images, a.seed)
    images = _to_tensor(images_np)
    _log(t0, f"{a.images} images rendered")
    if a.stage == "tiny-vae":
        vae = AutoencoderKL.from_pretrained(a.out / "vae", torch_dtype=torch.float32).eval()
        tiny, dec, enc = train_tiny_vae(vae, images, a.tiny_vae_steps, a.batch, a.seed, t0, a.tiny_vae_lr, a.device)
        tiny.to(torch.float16).save_pretrained(a.out / "tiny_vae", safe_serialization=True)
        record.setdefault("tiny_vae_runs", []).append(dict(
            steps=a.tiny_vae_steps, batch=a.batch, lr=a.tiny_vae_lr, seed=a.seed, images=a.images,
            torch_threads=torch.get_num_threads(), seconds=round(time.time() - t0, 1),
            final_decoder_l1_plus_mse=round(dec, 5), final_encoder_mse=round(enc, 5),
            parameters={"decoder": sum(p.numel() for p in tiny.decoder.parameters()),
                        "encoder": sum(p.numel() for p in tiny.encoder.parameters())}))
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        _log(t0, f"wrote {a.out / 'tiny_vae'}")
        return 0
    if a.stage == "unet":
        vae = AutoencoderKL.from_pretrained(a.out / "vae", torch_dtype=torch.float32).eval()
    else:
        vae, vae_rec = train_vae(images, a.vae_steps, 32, a.seed, t0, a.vae_lr, a.resume, a.device)
        latents = encode_all(vae, images)
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        run = dict(steps=a.vae_steps, batch=32, lr=a.vae_lr, resumed_from=str(a.resume or ""),
                   seconds=round(time.time() - t0, 1), final_reconstruction_l1_plus_mse=round(vae_rec, 5))
        record.setdefault("vae_runs", []).append(run)
        record.update(latent_scaling_factor=round(vae.config.scaling_factor, 5))
        if a.stage == "vae":
            vae.save_pretrained(a.out / "vae", safe_serialization=True)
            record_path.write_text(json.dumps(record, indent=1) + "\n")
            _log(t0, f"wrote {a.out / 'vae'}")
            return 0
    t1 = time.time()
    latents = encode_all(vae, images) * vae.config.scaling_factor
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"))
    ids, empty = tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    train_sched = DDPMScheduler.from_config(_cfg(FAMILY.scheduler))
    unet, text, unet_loss = train_unet(latents, ids, empty, a.unet_steps, a.batch, a.seed, t0, train_sched,
                                       a.unet_lr, a.resume, a.device, a.frozen_text)
    run = dict(steps=a.unet_steps, batch=a.batch, lr=a.unet_lr, resumed_from=str(a.resume or ""),
               text_encoder="frozen" if a.frozen_text else "joint", seconds=round(time.time() - t1, 1),
               final_loss_min_snr_weighted=round(unet_loss, 5), scheduler={k: FAMILY.scheduler[k] for k in
                                                                ("beta_schedule", "beta_start", "beta_end",
                                                                 "prediction_type")})
    record.setdefault("unet_runs", []).append(run)
    record.update(stored_dtype="float16",
                  parameters={n: sum(p.numel() for p in m.parameters()) for n, m in
                              (("text_encoder", text), ("unet", unet), ("vae", vae))})
    sched = EulerDiscreteScheduler.from_config(_cfg(FAMILY.scheduler))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(a.out, safe_serialization=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    _log(t0, f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
