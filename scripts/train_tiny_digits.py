#!/usr/bin/env python
"""Train "tiny-digits", the small text-to-image latent diffusion model that ships inside diffblocks.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``, 1797 images of 8x8 pixels, shipped
with scikit-learn, no download), upscaled to 32x32 RGB.

Model (a standard Stable Diffusion 1.x layout, only small):
  * ``vae``           diffblocks ``AutoencoderKL``: 32x32x3 <-> 4x8x8 latents
  * ``text_encoder``  diffblocks ``CLIPTextModel`` (hidden 64, 2 layers; transformers' file format) trained from
                      scratch
  * ``tokenizer``     diffblocks ``CLIPTokenizer`` with a generated BPE vocabulary covering the digit prompts
  * ``unet``          diffblocks ``UNet2DConditionModel`` (32/64 channels, cross-attention on the text)
  * ``scheduler``     DDPM noise schedule for training; the sampler named by ``--scheduler`` is shipped

Training: (1) the VAE on reconstruction + a small KL term; (2) the UNet and the text encoder together on the
usual epsilon-prediction loss over VAE latents, with the prompt dropped to "" 10% of the time (classifier-free
guidance). An exponential moving average of the UNet/text-encoder weights is what gets saved.

Deterministic for a given ``--seed`` and ``--threads`` (fixed data order, seeded generators).

Usage::

    python scripts/train_tiny_digits.py --output src/diffblocks/default_models/tiny-digits

The output folder is a regular ``StableDiffusionPipeline`` folder (model_index.json, safetensors) that both
diffblocks and diffusers load.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Prompt templates; {name} is the digit's word, {d} the digit itself.
PROMPT_TEMPLATES = [
    "{name}",
    "{d}",
    "digit {d}",
    "digit {name}",
    "the digit {name}",
    "the digit {d}",
    "a digit {name}",
    "a handwritten digit {name}",
    "a handwritten digit {d}",
    "handwritten {name}",
    "a handwritten {name}",
    "handwritten {d}",
    "the number {name}",
    "the number {d}",
    "number {d}",
    "number {name}",
    "a {name}",
    "a {d}",
    "a picture of a {name}",
    "an image of the digit {name}",
    "a drawing of the number {d}",
    "a hand written {name}",
    "the numeral {d}",
    "numeral {name}",
    "{name} handwritten",
    "a photo of a handwritten {d}",
]

# Extra words the tokenizer knows (so they tokenize to one id each); the model learns to ignore them.
EXTRA_WORDS = ["black", "white", "small", "simple", "image", "picture", "drawing", "photo", "of", "an", "and", "in", "style"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16

SCHEDULER_BETAS = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", trained_betas=None
)
FORMAT_VERSION = "0.36.0"


# ----------------------------------------------------------------------------------------------------------- data
def load_digit_images(size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1797 sklearn digits as (N, 3, size, size) float tensors in [-1, 1], plus their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)  # (N, 8, 8) in [0, 1]
    images = images[:, None]
    images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    images = images.repeat(1, 3, 1, 1) * 2.0 - 1.0
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def vocabulary_words() -> List[str]:
    words: List[str] = []
    for template in PROMPT_TEMPLATES:
        for piece in template.replace("{name}", "").replace("{d}", "").split():
            words.append(piece)
    words += DIGIT_NAMES + [str(d) for d in range(10)] + EXTRA_WORDS
    seen, ordered = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            ordered.append(w)
    return ordered


def write_tokenizer(folder: str, words: Sequence[str], max_length: int = MAX_LENGTH) -> None:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt, configs) whose vocabulary holds ``words``.

    Each word is built by left-to-right merges of its characters; every intermediate piece is a vocabulary entry
    (the tokenizers BPE model requires it). Characters outside these words map to the unknown token, which for
    CLIP is ``<|endoftext|>``.
    """
    os.makedirs(folder, exist_ok=True)
    vocab: Dict[str, int] = {}
    merges: List[str] = []

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    add(BOS)
    add(EOS)
    # Whole words first so they get small, stable ids; pieces after.
    word_pieces = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        word_pieces.append(symbols)
        add(word + "</w>")
    for symbols in word_pieces:
        for s in symbols:
            add(s)
        current = symbols
        while len(current) > 1:
            merged = current[0] + current[1]
            rule = f"{current[0]} {current[1]}"
            if rule not in merges:
                merges.append(rule)
            add(merged)
            current = [merged] + current[2:]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for rule in merges:
            f.write(rule + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    config = dict(special)
    config.update(
        {
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": True,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": max_length,
            "tokenizer_class": "CLIPTokenizer",
        }
    )
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, sort_keys=True)
        f.write("\n")


def make_prompts(labels: torch.Tensor, generator: torch.Generator, drop_prob: float) -> List[str]:
    n_templates = len(PROMPT_TEMPLATES)
    picks = torch.randint(0, n_templates, (len(labels),), generator=generator).tolist()
    drops = (torch.rand(len(labels), generator=generator) < drop_prob).tolist()
    prompts = []
    for label, pick, drop in zip(labels.tolist(), picks, drops):
        if drop:
            prompts.append("")
        else:
            prompts.append(PROMPT_TEMPLATES[pick].format(name=DIGIT_NAMES[label], d=label))
    return prompts


# ------------------------------------------------------------------------------------------------------- configs
def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 32],
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.0,  # replaced by 1/std of the latents after VAE training
        force_upcast=False,
    )


def unet_config(cross_attention_dim: int) -> dict:
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    )


def text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def scheduler_config(name: str) -> dict:
    # clip_sample / set_alpha_to_one / skip_prk_steps are carried for every class, as SD 1.5's config does, so that
    # swapping to DDIM/DDPM/PNDM with from_config does not fall back to clip_sample=True (which ruins these latents)
    common = dict(SCHEDULER_BETAS, prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
                  clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)
    if name == "DDIMScheduler":
        extra = dict(clip_sample=False, set_alpha_to_one=False)
    elif name == "EulerDiscreteScheduler":
        extra = dict(interpolation_type="linear", use_karras_sigmas=False)
    elif name == "DPMSolverMultistepScheduler":
        extra = dict(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, use_karras_sigmas=False)
    elif name == "DDPMScheduler":
        extra = dict(clip_sample=False, variance_type="fixed_small")
    else:
        raise ValueError(f"--scheduler must be DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler or DDPMScheduler, got {name!r}")
    cfg = {"_class_name": name, "_diffusers_version": FORMAT_VERSION}
    cfg.update(common)
    cfg.update(extra)
    return cfg


# ------------------------------------------------------------------------------------------------------ training
def model_classes(backend: str):
    if backend == "diffblocks":
        from diffblocks import AutoencoderKL, UNet2DConditionModel
    elif backend == "diffusers":  # cross-check only: the shipped model is trained with diffblocks' classes
        from diffusers import AutoencoderKL, UNet2DConditionModel
    else:
        raise ValueError(f"--backend must be 'diffblocks' or 'diffusers', got {backend!r}")
    return AutoencoderKL, UNet2DConditionModel


def text_classes(backend: str):
    """(CLIPTextConfig, CLIPTextModel, CLIPTokenizer): diffblocks' own, or transformers' for the diffusers
    cross-check. Both read and write the same files."""
    if backend == "diffusers":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    else:
        from diffblocks.models.clip_text import CLIPTextConfig, CLIPTextModel
        from diffblocks.models.clip_tokenizer import CLIPTokenizer
    return CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless, seeded stream of index batches (a fresh permutation per epoch)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def train_vae(AutoencoderKL, images: torch.Tensor, args, log) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 1)
    vae = AutoencoderKL(**vae_config())
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    stream = batches(len(images), args.vae_batch_size, gen)
    t0 = time.time()
    for step in range(args.vae_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100)
        x = images[next(stream)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            log(f"vae  step {step:5d}/{args.vae_steps}  rec {rec.item():.5f}  kl {kl.item():.4f}  ({time.time() - t0:.0f}s)")
    vae.eval()
    return vae


def train_unet(UNet2DConditionModel, latents_mean, latents_std, labels, tokenizer, args, log, checkpoint=None):
    CLIPTextConfig, CLIPTextModel, _ = text_classes(args.backend)

    gen = torch.Generator().manual_seed(args.seed + (3 if args.resume else 2))
    torch.manual_seed(args.seed + 2)
    if args.resume:
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(args.resume, "text_encoder"))
        unet = UNet2DConditionModel.from_pretrained(args.resume, subfolder="unet")
        log(f"resumed the UNet and text encoder from {args.resume}")
    else:
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer))))
        unet = UNet2DConditionModel(**unet_config(text_encoder.config.hidden_size))
    text_encoder.train()
    unet.train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    for p in list(ema_unet.parameters()) + list(ema_text.parameters()):
        p.requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)

    betas = torch.linspace(SCHEDULER_BETAS["beta_start"] ** 0.5, SCHEDULER_BETAS["beta_end"] ** 0.5, 1000) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    # Token ids of every (label, template) pair and of "" are computed once.
    cache: Dict[str, torch.Tensor] = {}

    def encode_ids(prompts: List[str]) -> torch.Tensor:
        missing = [p for p in set(prompts) if p not in cache]
        if missing:
            ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
            for p, row in zip(missing, ids):
                cache[p] = row
        return torch.stack([cache[p] for p in prompts])

    stream = batches(len(latents_mean), args.batch_size, gen)
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"unet parameters: {n_params / 1e6:.2f}M, text encoder: {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M")
    t0 = time.time()
    running = None
    for step in range(args.unet_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.unet_lr, 200)
        idx = next(stream)
        z0 = latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=gen)
        z0 = z0 * args.scaling_factor
        prompts = make_prompts(labels[idx], gen, args.uncond_prob)
        ids = encode_ids(prompts)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        hidden = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step:5d}/{args.unet_steps}  loss {loss.item():.4f}  avg {running:.4f}  ({time.time() - t0:.0f}s)")
        if checkpoint is not None and args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.unet_steps:
            checkpoint(ema_unet, ema_text)
            log(f"saved EMA checkpoint at step {step + 1}")
    return ema_unet, ema_text


# -------------------------------------------------------------------------------------------------------- saving
def save_pipeline_folder(output: str, vae, unet, text_encoder, tokenizer_dir: str, scheduler_name: str) -> None:
    """Write the pipeline folder into a temporary sibling and rename it into place."""
    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-digits-", dir=parent)
    try:
        vae.save_pretrained(os.path.join(tmp, "vae"))
        unet.save_pretrained(os.path.join(tmp, "unet"))
        text_encoder.save_pretrained(os.path.join(tmp, "text_encoder"), safe_serialization=True)
        shutil.copytree(tokenizer_dir, os.path.join(tmp, "tokenizer"))
        os.makedirs(os.path.join(tmp, "scheduler"))
        with open(os.path.join(tmp, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(scheduler_config(scheduler_name), f, indent=2, sort_keys=True)
            f.write("\n")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": FORMAT_VERSION,
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler_name],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        with open(os.path.join(tmp, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        # Keep a model card written next to an earlier model.
        card = os.path.join(output, "README.md")
        if os.path.isfile(card):
            shutil.copy(card, os.path.join(tmp, "README.md"))
        if os.path.isdir(output):
            old = output.rstrip("/") + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(output, old)
            os.rename(tmp, output)
            shutil.rmtree(old)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=os.path.join("src", "diffblocks", "default_models", "tiny-digits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it at float precision)")
    p.add_argument("--batch-size", type=int, default=64, help="UNet batch size")
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--unet-lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--save-every", type=int, default=500, help="also save the EMA model every N UNet steps (0: only at the end)")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="probability of the empty prompt (CFG dropout)")
    p.add_argument("--scheduler", default="DPMSolverMultistepScheduler", help="sampler saved as the default")
    p.add_argument("--resume", default=None, help="continue from a folder this script saved (skips VAE training)")
    p.add_argument("--backend", default="diffblocks", choices=["diffblocks", "diffusers"])
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    def log(msg: str) -> None:
        sys.stdout.write(f"[{time.time() - start:7.1f}s] {msg}\n")
        sys.stdout.flush()

    AutoencoderKL, UNet2DConditionModel = model_classes(args.backend)
    log(f"backend {args.backend}: {AutoencoderKL.__module__}, {UNet2DConditionModel.__module__}")
    images, labels = load_digit_images(32)
    log(f"data: {tuple(images.shape)} images, labels {torch.bincount(labels).tolist()}")

    _, _, CLIPTokenizer = text_classes(args.backend)

    work = tempfile.mkdtemp(prefix="tiny-digits-tok-")
    try:
        write_tokenizer(work, vocabulary_words())
        tokenizer = CLIPTokenizer.from_pretrained(work)
        log(f"tokenizer: {len(tokenizer)} tokens; 'a handwritten digit seven' -> {tokenizer('a handwritten digit seven').input_ids}")

        if args.resume:
            vae = AutoencoderKL.from_pretrained(args.resume, subfolder="vae").eval()
            log(f"resumed the VAE from {args.resume}")
        else:
            vae = train_vae(AutoencoderKL, images, args, log)
        with torch.no_grad():
            posts = [vae.encode(images[i : i + 256]).latent_dist for i in range(0, len(images), 256)]
            latents_mean = torch.cat([q.mean for q in posts])
            latents_std = torch.cat([q.std for q in posts])
            recon = torch.cat([vae.decode(latents_mean[i : i + 256]).sample for i in range(0, len(images), 256)])
        if args.resume:
            args.scaling_factor = float(vae.config.scaling_factor)
        else:
            args.scaling_factor = float(1.0 / latents_mean.std())
            vae.register_to_config(scaling_factor=args.scaling_factor)
        log(f"vae: recon mse {F.mse_loss(recon, images).item():.5f}; latent std {latents_mean.std().item():.4f}, mean posterior std {latents_std.mean().item():.4f}; scaling_factor {args.scaling_factor:.5f}")

        def checkpoint(u, te):
            save_pipeline_folder(args.output, vae, u, te, work, args.scheduler)

        unet, text_encoder = train_unet(UNet2DConditionModel, latents_mean, latents_std, labels, tokenizer, args, log, checkpoint)
        save_pipeline_folder(args.output, vae, unet, text_encoder, work, args.scheduler)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"saved {args.output} ({sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.output) for f in fs) / 1e6:.2f} MB) in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
