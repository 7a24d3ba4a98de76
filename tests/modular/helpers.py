"""Small blocks and components for the modular core tests (no diffblocks models needed)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import torch

from diffblocks.modular_pipelines import (
    AutoPipelineBlocks,
    ComponentSpec,
    ConditionalPipelineBlocks,
    ConfigSpec,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)


# ---------------------------------------------------------------------------------------------------------------------
# tiny components
# ---------------------------------------------------------------------------------------------------------------------


class TinyModel(torch.nn.Module):
    """A model with the from_pretrained/save_pretrained shape of diffusers models (config.json + weights)."""

    calls: List[Dict[str, Any]] = []

    def __init__(self, dim: int = 4, bias: float = 0.0) -> None:
        super().__init__()
        self.config = {"dim": dim, "bias": bias}
        self.linear = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear(x) + self.config["bias"]

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: Optional[str] = None):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            json.dump({"_class_name": type(self).__name__, **self.config}, f)
        name = "weights" + (f".{variant}" if variant else "") + ".pt"
        torch.save(self.state_dict(), os.path.join(save_directory, name))

    @classmethod
    def from_pretrained(cls, path, subfolder=None, variant=None, revision=None, torch_dtype=None, **kwargs):
        cls.calls.append({"path": path, "subfolder": subfolder, "variant": variant, "torch_dtype": torch_dtype,
                          **kwargs})
        folder = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isdir(folder):
            raise OSError(f"no folder {folder}")
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        config.pop("_class_name", None)
        model = cls(**config)
        name = "weights" + (f".{variant}" if variant else "") + ".pt"
        model.load_state_dict(torch.load(os.path.join(folder, name)))
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model


class OtherTinyModel(TinyModel):
    pass


class TinyScheduler:
    """A config object created from a dict (like schedulers/guiders)."""

    config_name = "scheduler_config.json"

    def __init__(self, num_train_timesteps: int = 1000, beta: float = 0.1) -> None:
        self.config = {"num_train_timesteps": num_train_timesteps, "beta": beta}

    @classmethod
    def from_config(cls, config, **kwargs):
        merged = {**dict(config), **kwargs}
        return cls(**{k: v for k, v in merged.items() if k in ("num_train_timesteps", "beta")})

    @classmethod
    def from_pretrained(cls, path, subfolder=None, **kwargs):
        folder = os.path.join(path, subfolder) if subfolder else path
        with open(os.path.join(folder, cls.config_name)) as f:
            return cls.from_config(json.load(f))

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, self.config_name), "w") as f:
            json.dump(self.config, f)


class PlainGuider:
    """A config-less object built from constructor kwargs."""

    def __init__(self, guidance_scale: float = 7.5) -> None:
        self.guidance_scale = guidance_scale


def write_tiny_model(folder: str, subfolder: str, seed: int = 0, cls=TinyModel, variant=None) -> TinyModel:
    torch.manual_seed(seed)
    model = cls(dim=4, bias=float(seed))
    model.save_pretrained(os.path.join(folder, subfolder), variant=variant)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# tiny blocks
# ---------------------------------------------------------------------------------------------------------------------


class AddBlock(ModularPipelineBlocks):
    """x -> x + amount, reads `amount` with a default."""

    model_name = "tiny"

    @property
    def description(self):
        return "Adds amount to x"

    @property
    def inputs(self):
        return [InputParam("x", required=True, description="the number"), InputParam("amount", default=1)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("x", type_hint=int, description="x plus amount")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.x = bs.x + bs.amount
        self.set_block_state(state, bs)
        return components, state


class DoubleBlock(ModularPipelineBlocks):
    model_name = "tiny"

    @property
    def description(self):
        return "Doubles x into y"

    @property
    def inputs(self):
        return [InputParam("x", required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("y", type_hint=int)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.y = bs.x * 2
        self.set_block_state(state, bs)
        return components, state


class ModelBlock(ModularPipelineBlocks):
    """Applies the `model` component to a tensor `sample`; scales by config `factor`."""

    model_name = "tiny"

    @property
    def expected_components(self):
        return [
            ComponentSpec("model", TinyModel, description="the tiny model"),
            ComponentSpec("scheduler", TinyScheduler, config={"beta": 0.5}, default_creation_method="from_config"),
        ]

    @property
    def expected_configs(self):
        return [ConfigSpec("factor", 2.0)]

    @property
    def inputs(self):
        return [InputParam("sample", required=True, type_hint=torch.Tensor)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("out", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.out = components.model(bs.sample) * components.config.factor
        self.set_block_state(state, bs)
        return components, state


class TextBlock(ModularPipelineBlocks):
    model_name = "tiny"

    @property
    def expected_components(self):
        return [ComponentSpec("text_model", TinyModel)]

    @property
    def inputs(self):
        return [InputParam("prompt", required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("prompt_len", type_hint=int)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.prompt_len = len(bs.prompt)
        self.set_block_state(state, bs)
        return components, state


class TinyLoopWrapper(LoopSequentialPipelineBlocks):
    model_name = "tiny"

    @property
    def description(self):
        return "Loops num_steps times"

    @property
    def loop_inputs(self):
        return [InputParam("num_steps", default=2)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        for i in self.progress_bar(range(bs.num_steps)):
            components, bs = self.loop_step(components, bs, i=i)
        self.set_block_state(state, bs)
        return components, state


class LoopAdd(ModularPipelineBlocks):
    @property
    def inputs(self):
        return [InputParam("x")]

    @property
    def intermediate_outputs(self):
        return [OutputParam("x")]

    def __call__(self, components, block_state, i):
        block_state.x = block_state.x + 1
        return components, block_state


# conditional blocks in the shape of spec 4.4


def _branch(name, class_name, strength, extra_inputs=()):
    class Branch(ModularPipelineBlocks):
        @property
        def description(self):
            return f"{name} branch"

        @property
        def inputs(self):
            return [InputParam("prompt", required=True), InputParam("strength", type_hint=float, default=strength),
                    *[InputParam(n, required=True) for n in extra_inputs]]

        @property
        def intermediate_outputs(self):
            return [OutputParam("workflow", type_hint=str)]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.workflow = name
            self.set_block_state(state, bs)
            return components, state

    Branch.__name__ = Branch.__qualname__ = class_name
    return Branch


TextToImageBlock = _branch("text2img", "TextToImageBlock", None)
ImageToImageBlock = _branch("img2img", "ImageToImageBlock", 0.3, ("image",))
InpaintBlock = _branch("inpaint", "InpaintBlock", 0.9999, ("image", "mask"))


class ImageConditional(ConditionalPipelineBlocks):
    block_classes = [InpaintBlock, ImageToImageBlock, TextToImageBlock]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask", "image"]
    default_block_name = "text2img"

    @property
    def description(self):
        return "Picks inpaint / img2img / text2img"

    def select_block(self, mask=None, image=None):
        if mask is not None:
            return "inpaint"
        if image is not None:
            return "img2img"
        return None


class AutoImageBlocks(AutoPipelineBlocks):
    block_classes = [InpaintBlock, ImageToImageBlock]
    block_names = ["inpaint", "img2img"]
    block_trigger_inputs = ["mask", "image"]

    @property
    def description(self):
        return "inpaint when mask, img2img when image, else skipped"
