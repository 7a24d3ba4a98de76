"""Output of the Stable Diffusion 1.x/2.x pipelines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import PIL.Image
import torch

from ...models.outputs import BaseOutput


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images``: list of PIL images, a (B, H, W, C) numpy array or a tensor (``output_type``);
    ``nsfw_content_detected``: one flag per image from the safety checker, or None without one."""

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    nsfw_content_detected: Optional[List[bool]]
