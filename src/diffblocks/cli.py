"""The ``diffblocks`` command: ``generate``, ``info`` and ``blocks``.

Errors are printed as one line (``diffblocks: error: ...``) naming the bad argument, and the command exits
non-zero: 2 for bad arguments, 1 when the work itself fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# short names users type, mapped to scheduler classes and the config overrides that define the variant
SCHEDULER_ALIASES: Dict[str, Tuple[str, Dict[str, object]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2-a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2s": ("DPMSolverSinglestepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
SCHEDULER_CLASSES = sorted({cls for cls, _ in SCHEDULER_ALIASES.values()})

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CLIError(Exception):
    """A user error: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- argument parsing
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each option; options defaulting to None say in their help what happens."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = _Parser(prog="diffblocks", description="Generate images and inspect diffusion checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,info,blocks}", parser_class=_Parser)
    sub.required = True

    gen = sub.add_parser("generate", help="generate images from a prompt", formatter_class=fmt)
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument("--model", default=None,
                     help="checkpoint folder or Hub repo id (default: the embedded model diffblocks/tiny-digits)")
    gen.add_argument("--negative", default=None, help="negative prompt (default: none)")
    gen.add_argument("--steps", type=int, default=20, help="number of denoising steps")
    gen.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance scale (default: the pipeline's own, 7.5 for SD)")
    gen.add_argument("--scheduler", default=None,
                     help="scheduler: a short name (" + ", ".join(SCHEDULER_ALIASES) + ") or a class name; "
                          "default: the checkpoint's own")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--size", default=None, help="WxH in pixels, multiples of 8 (default: the model's native size)")
    gen.add_argument("--num-images", type=int, default=1, help="images per prompt")
    gen.add_argument("--image", default=None, help="initial image for image-to-image, or inpainting with --mask (default: none, text-to-image)")
    gen.add_argument("--strength", type=float, default=0.8, help="how much to change --image, in [0, 1]")
    gen.add_argument("--mask", default=None, help="inpainting mask, white = repaint; needs --image (default: none)")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                     help="LoRA weights to load, repeatable, with an optional weight (default: none)")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights dtype")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    gen.add_argument("--out", default="out", help="output folder for the PNG files")
    gen.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show progress bars even when not on a terminal (default: shown on a terminal only)")
    gen.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                     help="hide progress bars")

    info = sub.add_parser("info", help="describe a checkpoint: components, classes, sizes, variants", formatter_class=fmt)
    info.add_argument("model", help="checkpoint folder or Hub repo id")

    blocks = sub.add_parser("blocks", help="print the modular blocks for a checkpoint, with inputs and outputs",
                            formatter_class=fmt)
    blocks.add_argument("model", nargs="?", default=None, help="checkpoint folder or Hub repo id (default: embedded)")
    return parser


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise CLIError(f"--size: expected WxH such as 512x512, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise CLIError(f"--size: width and height must be positive multiples of 8, got {width}x{height}")
    return width, height


def parse_lora(text: str) -> Tuple[str, float]:
    path, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"-?\d+(\.\d+)?", tail):
        path, weight = head, float(tail)
    if not os.path.exists(path):
        raise CLIError(f"--lora: file not found: {path}")
    return path, weight


def resolve_scheduler(name: str):
    """Return (class, overrides) for a short name or class name; CLIError listing the choices otherwise."""
    import diffblocks

    key = name.strip()
    if key.lower() in SCHEDULER_ALIASES:
        cls_name, overrides = SCHEDULER_ALIASES[key.lower()]
    elif key in SCHEDULER_CLASSES:
        cls_name, overrides = key, {}
    else:
        raise CLIError(
            f"--scheduler: unknown scheduler {name!r}; choose one of: " + ", ".join(list(SCHEDULER_ALIASES) + SCHEDULER_CLASSES)
        )
    return getattr(diffblocks, cls_name), overrides


def default_model_or_error() -> str:
    try:
        from .default_models import default_model_path
    except ImportError:
        raise CLIError("--model: no model given and the embedded default model is not installed; pass --model PATH_OR_REPO")
    path = default_model_path()
    if not path or not os.path.isdir(path):
        raise CLIError("--model: no model given and the embedded default model is not installed; pass --model PATH_OR_REPO")
    return path


def _check_file(flag: str, path: Optional[str]) -> None:
    if path is not None and not os.path.isfile(path):
        raise CLIError(f"{flag}: file not found: {path}")


# ----------------------------------------------------------------------------- commands
def cmd_generate(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    if args.steps < 1:
        raise CLIError(f"--steps: must be at least 1, got {args.steps}")
    if args.num_images < 1:
        raise CLIError(f"--num-images: must be at least 1, got {args.num_images}")
    if not 0.0 <= args.strength <= 1.0:
        raise CLIError(f"--strength: must be in [0, 1], got {args.strength}")
    _check_file("--image", args.image)
    _check_file("--mask", args.mask)
    if args.mask is not None and args.image is None:
        raise CLIError("--mask: inpainting needs an initial image; pass --image too")
    loras = [parse_lora(item) for item in args.lora]
    scheduler_choice = resolve_scheduler(args.scheduler) if args.scheduler else None
    model = args.model or default_model_or_error()

    import torch

    import diffblocks
    from diffblocks.utils import load_image

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CLIError(f"--device: not a device: {args.device!r} (expected cpu, cuda, cuda:N or mps)")
    dtype = getattr(torch, DTYPES[args.dtype])

    from diffblocks.utils import logging as db_logging

    if args.progress is False:
        db_logging.disable_progress_bar()
    else:
        db_logging.enable_progress_bar(force=bool(args.progress))
    if args.mask is not None:
        auto = diffblocks.AutoPipelineForInpainting
    elif args.image is not None:
        auto = diffblocks.AutoPipelineForImage2Image
    else:
        auto = diffblocks.AutoPipelineForText2Image
    pipe = auto.from_pretrained(model, torch_dtype=dtype)
    show = args.progress if args.progress is not None else None
    pipe.set_progress_bar_config(disable=None if show is None else not show)
    if scheduler_choice is not None:
        cls, overrides = scheduler_choice
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    if loras:
        names = []
        for index, (path, _) in enumerate(loras):
            name = f"lora_{index}"
            pipe.load_lora_weights(path, adapter_name=name)
            names.append(name)
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    pipe.to(device)

    call: Dict[str, object] = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "num_inference_steps": args.steps,
        "num_images_per_prompt": args.num_images,
        "generator": torch.Generator(device="cpu").manual_seed(args.seed),
    }
    if args.guidance is not None:
        call["guidance_scale"] = args.guidance
    if size is not None:
        call["width"], call["height"] = size
    if args.image is not None:
        call["image"] = load_image(args.image)
        call["strength"] = args.strength
    if args.mask is not None:
        call["mask_image"] = load_image(args.mask)
    images = pipe(**call).images

    os.makedirs(args.out, exist_ok=True)
    params = {
        "prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps,
        "guidance_scale": args.guidance if args.guidance is not None else getattr(pipe, "guidance_scale", None),
        "scheduler": type(pipe.scheduler).__name__, "seed": args.seed, "model": model,
        "size": f"{images[0].width}x{images[0].height}", "dtype": args.dtype,
        "image": args.image, "strength": args.strength if args.image else None, "mask": args.mask,
        "lora": [f"{p}:{w}" for p, w in loras], "pipeline": type(pipe).__name__,
        "generator": "diffblocks " + diffblocks.__version__,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", args.prompt.lower()).strip("-")[:40] or "image"
    written = []
    for index, image in enumerate(images):
        path = os.path.join(args.out, f"{slug}-{args.seed}-{index}.png")
        save_png_with_parameters(image, path, {**params, "index": index})
        written.append(path)
    for path in written:
        print(path)
    return 0


def save_png_with_parameters(image, path: str, params: Dict[str, object]) -> None:
    """Save ``image`` as PNG with ``params`` as JSON in the ``parameters`` text chunk (atomically)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", json.dumps(params, sort_keys=True))
    tmp = path + ".tmp"
    try:
        image.save(tmp, format="PNG", pnginfo=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _folder_of(model: str) -> str:
    if os.path.isdir(model):
        return model
    from .hub import resolve_folder

    return resolve_folder(model)


def describe_checkpoint(model: str) -> str:
    """The text of ``diffblocks info``: pipeline class, components with classes, sizes and variants."""
    folder = _folder_of(model)
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise CLIError(f"model: no model_index.json in {folder}")
    with open(index_path, encoding="utf-8") as handle:
        index = json.load(handle)
    lines = [f"{model}", f"  pipeline class: {index.get('_class_name')}"]
    try:
        from .pipelines.auto_pipeline import describe_auto_pipelines

        for task, cls_name in describe_auto_pipelines(index.get("_class_name")).items():
            lines.append(f"  {task}: {cls_name}")
    except (ImportError, AttributeError):
        pass
    lines.append("  components:")
    weight_ext = (".safetensors", ".bin")
    for name, value in sorted(index.items()):
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, cls_name = value
        if library is None:
            lines.append(f"    {name:<18} (none)")
            continue
        sub = os.path.join(folder, name)
        size, variants = 0, set()
        if os.path.isdir(sub):
            for file in os.listdir(sub):
                if file.endswith(weight_ext):
                    size += os.path.getsize(os.path.join(sub, file))
                    parts = file.split(".")
                    if len(parts) > 2 and not parts[1].startswith("safetensors") and not parts[1].startswith("bin"):
                        variants.add(parts[1].split("-")[0])
        extra = f"{size / 1e6:10.2f} MB" if size else " " * 13
        variant_text = f"  variants: {', '.join(sorted(variants))}" if variants else ""
        lines.append(f"    {name:<18} {library}.{cls_name:<32} {extra}{variant_text}")
    options = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    if options:
        lines.append("  options: " + ", ".join(f"{k}={v}" for k, v in sorted(options.items())))
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(describe_checkpoint(args.model))
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from .modular_pipelines import ModularPipeline

    model = args.model or default_model_or_error()
    pipe = ModularPipeline.from_pretrained(_folder_of(model))
    print(pipe.blocks)
    print(pipe.blocks.doc)
    return 0


COMMANDS = {"generate": cmd_generate, "info": cmd_info, "blocks": cmd_blocks}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CLIError as error:
        print(f"diffblocks: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, EnvironmentError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"diffblocks: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffblocks: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
