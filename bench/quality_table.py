#!/usr/bin/env python
"""Quality versus speed of the samplers on the shipped model ``diffblocks/tiny-digits``.

For each scheduler and 5/10/20/50 steps: 50 images (digits 0-9 x 5 seeds, prompt "a handwritten digit <name>",
default guidance), classified by a logistic regression fit on scikit-learn's digits; prompt adherence is the share
classified as the requested digit. Seconds per image are measured on the batch of 50 (CPU, this machine).

    python bench/quality_table.py                  # writes bench/QUALITY.md and bench/quality.png
    python bench/quality_table.py --grid-only      # writes docs/digits_grid.png only

Also writes docs/digits_grid.png: one image of each digit, generated with the default scheduler and 20 steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SCHEDULERS = [
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerAncestralDiscreteScheduler",
]
STEPS = [5, 10, 20, 50]
SEEDS = [0, 1, 2, 3, 4]
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def load_pipeline():
    import diffblocks
    from diffblocks.default_models import default_model_path

    pipe = diffblocks.StableDiffusionPipeline.from_pretrained(default_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_grid(pipe, path: str, seed: int = 0, steps: int = 20, cell: int = 96) -> None:
    import torch
    from PIL import Image

    from tests.quality.digits_eval import generators, prompt_for

    prompts = [prompt_for(d) for d in range(10)]
    with torch.inference_mode():
        images = pipe(prompts, num_inference_steps=steps, generator=generators([seed] * 10), output_type="pil").images
    pad = 4
    grid = Image.new("RGB", (10 * cell + 11 * pad, cell + 2 * pad), (40, 40, 40))
    for i, im in enumerate(images):
        grid.paste(im.resize((cell, cell), Image.NEAREST), (pad + i * (cell + pad), pad))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid.save(path)


def measure(pipe, clf):
    import torch

    import diffblocks
    from tests.quality.digits_eval import classify, digit_requests, generators

    prompts, targets, seeds = digit_requests(SEEDS)
    targets = np.array(targets)
    base_config = dict(pipe.scheduler.config)
    rows = []
    for name in SCHEDULERS:
        pipe.scheduler = getattr(diffblocks, name).from_config(base_config)
        for steps in STEPS:
            start = time.perf_counter()
            with torch.inference_mode():
                images = pipe(prompts, num_inference_steps=steps, generator=generators(seeds), output_type="np").images
            seconds = (time.perf_counter() - start) / len(prompts)
            adherence = float((classify(clf, images) == targets).mean())
            rows.append((name, steps, adherence, seconds))
            print(f"{name:34s} {steps:3d} steps  adherence {adherence:.2f}  {seconds * 1000:.1f} ms/image", flush=True)
    pipe.scheduler = getattr(diffblocks, base_config["_class_name"]).from_config(base_config)
    return rows


def write_markdown(rows, path: str, default: str) -> None:
    lines = [
        "# Sampler quality on the shipped model `diffblocks/tiny-digits`",
        "",
        "Prompt adherence = share of 50 images (digits 0-9 x seeds 0-4, prompt \"a handwritten digit <name>\", "
        "guidance 7.5) that a logistic regression fit on scikit-learn's digits classifies as the requested digit. "
        "Seconds per image: the batch of 50 on this machine's CPU, divided by 50 (noisy: shared machine).",
        f"Default scheduler of the model: `{default}`. Written by `python bench/quality_table.py`.",
        "",
        "| scheduler | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for name in SCHEDULERS:
        cells = []
        for steps in STEPS:
            adherence, seconds = next((a, t) for n, s, a, t in rows if n == name and s == steps)
            cells.append(f"{adherence * 100:.0f}% ({seconds * 1000:.0f} ms)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_plot(rows, path: str) -> None:
    """Adherence (y) against seconds per image (x, log scale), one line per scheduler (PIL only)."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 900, 520, 70, 290, 30, 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    xs = [t for _, _, _, t in rows]
    lo, hi = np.log10(min(xs) * 0.8), np.log10(max(xs) * 1.25)

    def px(t, a):
        x = left + (np.log10(t) - lo) / (hi - lo) * (w - left - right)
        y = top + (1.0 - a) * (h - top - bottom)
        return x, y

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for a in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        _, y = px(1e-9 + 10 ** lo, a)
        d.line([left, y, w - right, y], fill=(220, 220, 220) if a != 0.9 else (250, 150, 150))
        d.text((left - 40, y - 6), f"{a * 100:.0f}%", fill="black")
    for exp in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0 ** exp
            if lo <= np.log10(t) <= hi:
                x, _ = px(t, 0)
                d.line([x, top, x, h - bottom], fill=(235, 235, 235))
                d.text((x - 12, h - bottom + 6), f"{t * 1000:g}ms", fill="black")
    d.text((left, h - 25), "seconds per image (log scale); labels on points = steps", fill="black")
    d.text((left, 8), "prompt adherence vs speed, diffblocks/tiny-digits", fill="black")
    for i, name in enumerate(SCHEDULERS):
        color = COLORS[i % len(COLORS)]
        pts = [(px(t, a), s) for n, s, a, t in rows if n == name]
        d.line([p for p, _ in pts], fill=color, width=2)
        for (x, y), s in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            d.text((x + 4, y - 12), str(s), fill=color)
        d.line([w - right + 15, top + 10 + 20 * i, w - right + 35, top + 10 + 20 * i], fill=color, width=3)
        d.text((w - right + 40, top + 4 + 20 * i), name, fill="black")
    im.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Quality-versus-speed table of the samplers on diffblocks/tiny-digits")
    p.add_argument("--grid-only", action="store_true", help="only write docs/digits_grid.png")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    write_grid(pipe, os.path.join(ROOT, "docs", "digits_grid.png"))
    print("wrote docs/digits_grid.png", flush=True)
    if args.grid_only:
        return 0
    from tests.quality.digits_eval import fit_digit_classifier

    rows = measure(pipe, fit_digit_classifier())
    write_markdown(rows, os.path.join(ROOT, "bench", "QUALITY.md"), pipe.scheduler.config["_class_name"])
    write_plot(rows, os.path.join(ROOT, "bench", "quality.png"))
    print("wrote bench/QUALITY.md and bench/quality.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
