"""set_adapters with block-wise UNet scales ({"down": ..., "mid": ..., "up": ...}): parity with diffusers on tiny SD
and SDXL, the expansion itself, and errors that leave the previous scales in place."""
import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sd_folder, build_tiny_sdxl_folder
from tests.loaders.test_lora import assert_close, make_lora, run
from tests.loaders.test_lora_sdxl import make_sdxl_lora


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    from diffblocks import StableDiffusionPipeline

    folder = build_tiny_sd_folder(str(tmp_path_factory.mktemp("lora_blocks") / "sd"))
    ours = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    for pipe in (ours, ref):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(make_lora(ours, "peft", seed=41), adapter_name="x")
        pipe.load_lora_weights(make_lora(ours, "kohya", seed=42, alpha=2.0), adapter_name="y")
    return ours, ref


def _attention_blocks(unet, half):
    return [i for i, b in enumerate(getattr(unet, f"{half}_blocks")) if hasattr(b, "attentions")]


def test_expansion(pipes):
    from diffblocks.loaders.lora import expand_unet_block_scales

    unet = pipes[0].unet
    down, up = _attention_blocks(unet, "down"), _attention_blocks(unet, "up")
    per = unet.config.layers_per_block
    got = expand_unet_block_scales(unet, {"down": 0.5, "up": {f"block_{up[0]}": [0.1] * (per + 1)}})
    want = {"mid_block.attentions.0": 1.0}
    want.update({f"up_blocks.{up[0]}.attentions.{j}": 0.1 for j in range(per + 1)})
    want.update({f"down_blocks.{i}.attentions.{j}": 0.5 for i in down for j in range(per)})
    assert got == want
    for name in got:  # every expanded key names a real attention block
        unet.get_submodule(name)


def test_blockwise_parity_sd(pipes):
    ours, ref = pipes
    up = _attention_blocks(ours.unet, "up")[0]
    per = ours.unet.config.layers_per_block + 1
    up_scales = [0.2, 1.5] + [0.9] * (per - 2)
    weights = [{"unet": {"down": 0.3, "mid": 0.0, "up": {f"block_{up}": up_scales}}, "text_encoder": 0.5}, 0.8]
    for pipe in (ours, ref):
        pipe.set_adapters(["x", "y"], adapter_weights=weights)
    blockwise = run(ours)
    assert_close(blockwise, run(ref))
    for pipe in (ours, ref):
        pipe.set_adapters(["x", "y"], adapter_weights=[{"unet": 1.0, "text_encoder": 0.5}, 0.8])
    assert float(np.abs(run(ours) - blockwise).max()) > 1e-3  # the block scales mattered
    # one-element lists broadcast; "mid" as a one-element list
    for pipe in (ours, ref):
        pipe.set_adapters("x", adapter_weights={"unet": {"mid": [0.4], "up": {f"block_{up}": [0.6]}}})
    assert_close(run(ours), run(ref))
    layer = ours.unet.get_submodule(f"up_blocks.{up}.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["x"] == pytest.approx(0.6)


def test_blockwise_errors_change_nothing(pipes):
    ours, _ = pipes
    ours.set_adapters(["x", "y"], adapter_weights=[0.7, 0.3])
    before = run(ours)
    down = _attention_blocks(ours.unet, "down")
    missing = next(i for i in range(len(ours.unet.down_blocks) + 1) if i not in down)
    with pytest.raises(ValueError, match=rf"Can't set lora scale for down blocks \['block_{missing}'\]"):
        ours.set_adapters(["x", "y"], adapter_weights=[0.1, {"unet": {"down": {f"block_{missing}": 1.0}}}])
    with pytest.raises(ValueError, match=r"Expected \d+ scales for down\.block_\d+, got 7\."):
        ours.set_adapters("x", adapter_weights={"unet": {"down": {f"block_{down[0]}": [1.0] * 7}}})
    with pytest.raises(ValueError, match=r"take the keys 'down', 'mid' and 'up'; got \['middle'\]"):
        ours.set_adapters("x", adapter_weights={"unet": {"middle": 1.0}})
    with pytest.raises(ValueError, match="only supported for the unet"):
        ours.set_adapters("x", adapter_weights={"text_encoder": {"down": 1.0}})
    with pytest.raises(ValueError, match="Expected 1 scales for mid, got 2."):
        ours.set_adapters("x", adapter_weights={"unet": {"mid": [1.0, 2.0]}})
    with pytest.raises(TypeError, match=r"LoRA scale for mid must be a number, got 'a'"):
        ours.set_adapters("x", adapter_weights={"unet": {"mid": "a"}})
    assert ours.get_active_adapters() == ["x", "y"]
    assert np.array_equal(run(ours), before)


def test_blockwise_parity_sdxl(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffblocks import StableDiffusionXLPipeline

    folder = build_tiny_sdxl_folder(str(tmp_path / "sdxl"))
    ours = StableDiffusionXLPipeline.from_pretrained(folder)
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    down = _attention_blocks(ours.unet, "down")
    up = _attention_blocks(ours.unet, "up")
    assert 0 not in down  # SDXL's first down block has no attention: the case diffusers' expansion skips
    scales = {"unet": {"down": {f"block_{down[-1]}": [0.2, 1.4]}, "mid": 0.5, "up": {f"block_{up[0]}": 0.0}},
              "text_encoder_2": 0.3}
    for pipe in (ours, ref):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(make_sdxl_lora(ours, "sgm", seed=43, alpha=2.0), adapter_name="s")
        pipe.set_adapters("s", adapter_weights=scales)

    def image(pipe):
        return np.asarray(pipe("a tiny photo", num_inference_steps=2, height=32, width=32, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images)

    assert float(np.abs(image(ours) - image(ref)).max()) <= 1e-4
