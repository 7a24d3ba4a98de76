"""The Stable Diffusion 1.x safety checker, with the parameter names SD 1.x folders store.

A transformers ``PreTrainedModel`` over a ``CLIPConfig``: a CLIP vision tower, a projection, and fixed concept
embeddings with per-concept thresholds. Images whose projected embedding is too close to a concept are flagged and
replaced by black images.
"""
from __future__ import annotations

import logging
from typing import List, Tuple, Union

import numpy as np
import torch
from torch import nn
from transformers import CLIPConfig, CLIPVisionModel, PreTrainedModel

logger = logging.getLogger(__name__)

_NUM_CONCEPTS = 17
_NUM_SPECIAL = 3


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(a) @ nn.functional.normalize(b).t()


class StableDiffusionSafetyChecker(PreTrainedModel):
    """NSFW filter of the SD 1.x releases (``["stable_diffusion", "StableDiffusionSafetyChecker"]``).

    ``forward(clip_input, images)`` returns ``(images, has_nsfw_concepts)``: flagged entries of ``images`` (a
    tensor, a list of tensors or a numpy batch) are replaced by zeros and ``has_nsfw_concepts`` is a list of bools.
    """

    config_class = CLIPConfig
    main_input_name = "clip_input"
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        dim = config.projection_dim
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(_NUM_CONCEPTS, dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(_NUM_SPECIAL, dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(_NUM_CONCEPTS), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(_NUM_SPECIAL), requires_grad=False)
        self.post_init()


    def nsfw_scores(self, clip_input: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """Per image: (special-care scores, concept scores), each rounded to 3 decimals as the release does."""
        pooled = self.vision_model(clip_input)[1]
        embeds = self.visual_projection(pooled)
        special = _cosine(embeds, self.special_care_embeds).float().cpu().numpy()
        concept = _cosine(embeds, self.concept_embeds).float().cpu().numpy()
        special_scores = np.round(special - self.special_care_embeds_weights.float().cpu().numpy(), 3)
        # an image touching a "special care" concept gets a stricter threshold for every concept
        adjustment = np.where((special_scores > 0).any(axis=1, keepdims=True), 0.01, 0.0)
        concept_scores = np.round(concept - self.concept_embeds_weights.float().cpu().numpy() + adjustment, 3)
        return special_scores, concept_scores

    @torch.no_grad()
    def forward(
        self, clip_input: torch.Tensor, images: Union[torch.Tensor, np.ndarray, List]
    ) -> Tuple[Union[torch.Tensor, np.ndarray, List], List[bool]]:
        _, concept_scores = self.nsfw_scores(clip_input)
        has_nsfw = [bool(row.any()) for row in concept_scores > 0]
        for idx, flagged in enumerate(has_nsfw):
            if not flagged:
                continue
            if torch.is_tensor(images) or torch.is_tensor(images[0]):
                images[idx] = torch.zeros_like(images[idx])
            else:
                images[idx] = np.zeros(images[idx].shape)
        if any(has_nsfw):
            logger.warning(
                "Potential NSFW content was detected in one or more images. A black image will be returned instead."
                " Try again with a different prompt and/or seed."
            )
        return images, has_nsfw
