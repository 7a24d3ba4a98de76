"""Output of the Stable Diffusion XL pipelines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Union

import numpy as np
import PIL.Image
import torch

from ...models.outputs import BaseOutput


@dataclass
class StableDiffusionXLPipelineOutput(BaseOutput):
    """``images``: list of PIL images, a (B, H, W, C) numpy array, a tensor, or latents (``output_type``)."""

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
