"""IP-Adapter image projections: original checkpoint names -> diffusers' layout (same state-dict keys and outputs
as diffusers' modules), any resampler depth, clear errors for the variants we do not load."""
import pytest
import torch

from diffblocks.models.ip_adapter_projection import (
    ImageProjection,
    IPAdapterPlusImageProjection,
    MultiIPAdapterImageProjection,
    convert_ip_adapter_image_proj,
    num_image_tokens,
)
from tests.ip_adapter._tiny_ip import PLUS_QUERIES, VISION_HIDDEN, plain_state_dict, plus_state_dict

LAYERS = [(64, 32)] * 3


@pytest.mark.parametrize("kind", ["plain", "plus"])
def test_same_keys_and_outputs_as_diffusers(kind):
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    sd = (plain_state_dict if kind == "plain" else plus_state_dict)(LAYERS, 32, seed=3)["image_proj"]
    module, renamed = convert_ip_adapter_image_proj(sd)
    module.load_state_dict(renamed, strict=True)
    if kind == "plain":
        assert isinstance(module, ImageProjection) and num_image_tokens(sd) == 4
        theirs = embeddings.ImageProjection(image_embed_dim=24, cross_attention_dim=32, num_image_text_embeds=4)
        x = torch.randn(3, 24, generator=torch.Generator().manual_seed(0))
    else:
        assert isinstance(module, IPAdapterPlusImageProjection) and num_image_tokens(sd) == PLUS_QUERIES
        theirs = embeddings.IPAdapterPlusImageProjection(embed_dims=VISION_HIDDEN, output_dims=32, hidden_dims=32,
                                                         heads=1, num_queries=PLUS_QUERIES)
        x = torch.randn(3, 17, VISION_HIDDEN, generator=torch.Generator().manual_seed(0))
    assert set(theirs.state_dict()) == set(module.state_dict())
    theirs.load_state_dict(module.state_dict(), strict=True)
    with torch.no_grad():
        ours_out, want = module(x), theirs(x)
    assert ours_out.shape == want.shape == (3, 4 if kind == "plain" else PLUS_QUERIES, 32)
    assert torch.allclose(ours_out, want, atol=1e-6)


def test_any_resampler_depth_and_multi_container():
    sd = plus_state_dict(LAYERS, 32, seed=1, depth=2)["image_proj"]
    module, renamed = convert_ip_adapter_image_proj(sd)
    assert len(module.layers) == 2
    module.load_state_dict(renamed, strict=True)
    multi = MultiIPAdapterImageProjection([module])
    out = multi([torch.randn(2, 1, 17, VISION_HIDDEN)])
    assert len(out) == 1 and out[0].shape == (2, 1, PLUS_QUERIES, 32)
    with pytest.raises(ValueError, match="holds 2 entries but 1"):
        multi([torch.randn(2, 1, 17, VISION_HIDDEN)] * 2)


@pytest.mark.parametrize("keys, name", [({"proj.3.weight": 0, "proj.0.weight": 0}, "full-face"),
                                        ({"norm.weight": 0, "proj.0.weight": 0}, "FaceID"),
                                        ({"perceiver_resampler.proj_in.weight": 0}, "FaceID-Plus"),
                                        ({"something": 0}, "unknown")])
def test_unsupported_variants(keys, name):
    with pytest.raises(ValueError, match=f"Unsupported IP-Adapter image projection: {name}"):
        convert_ip_adapter_image_proj({k: torch.zeros(1) for k in keys})
