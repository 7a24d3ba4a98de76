"""LoRA on SDXL (two text encoders): parity against diffusers for peft, kohya (lora_te1_/lora_te2_) and kohya
files with the original SGM block numbering."""
import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sdxl_folder

RANK = 4


def _to_sgm(name, layers_per_block):
    """diffusers attention module name -> the original SDXL (SGM) numbering kohya files use (dots kept)."""
    per = layers_per_block + 1
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return f"input_blocks.{1 + int(parts[1]) * per + int(parts[3])}.1." + ".".join(parts[4:])
    if parts[0] == "up_blocks":
        return f"output_blocks.{int(parts[1]) * per + int(parts[3])}.1." + ".".join(parts[4:])
    return "middle_block.1." + ".".join(parts[3:])


def make_sdxl_lora(pipe, layout, seed, alpha=2.0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    entries = []
    for n, m in pipe.unet.named_modules():
        if n.rsplit(".", 1)[-1] in ("to_q", "to_v") or n.endswith("attn2.to_out.0"):
            entries.append(("unet", n, m))
    for comp in ("text_encoder", "text_encoder_2"):
        for n, m in getattr(pipe, comp).named_modules():
            if n.rsplit(".", 1)[-1] in ("q_proj", "out_proj"):
                entries.append((comp, n if n.startswith("text_model.") else "text_model." + n, m))
    for comp, name, layer in entries:
        down = torch.randn(RANK, layer.in_features, generator=gen) * 0.3
        up = torch.randn(layer.out_features, RANK, generator=gen) * 0.3
        if layout == "peft":
            sd[f"{comp}.{name}.lora_A.weight"], sd[f"{comp}.{name}.lora_B.weight"] = down, up
        else:
            if layout == "sgm" and comp == "unet":
                name = _to_sgm(name, layers_per_block=pipe.unet.config.layers_per_block)
            prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[comp]
            base = prefix + name.replace(".", "_")
            sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = down, up
            sd[f"{base}.alpha"] = torch.tensor(alpha)
    return sd


def test_sdxl_two_text_encoders_parity(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffblocks import StableDiffusionXLPipeline

    folder = build_tiny_sdxl_folder(str(tmp_path / "sdxl"))
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    ours = StableDiffusionXLPipeline.from_pretrained(folder)
    assert "text_encoder_2" in ours._lora_loadable_modules
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(make_sdxl_lora(ours, "peft", seed=1), adapter_name="a")
        pipe.load_lora_weights(make_sdxl_lora(ours, "kohya", seed=2), adapter_name="b")
        pipe.load_lora_weights(make_sdxl_lora(ours, "sgm", seed=4, alpha=3.0), adapter_name="s")
        pipe.set_adapters(["a", "b", "s"], adapter_weights=[0.6, 1.2, 0.8])
    assert ours.get_list_adapters() == {"unet": ["a", "b", "s"], "text_encoder": ["a", "b", "s"],
                                        "text_encoder_2": ["a", "b", "s"]}

    def run(pipe):
        return np.asarray(pipe("a tiny photo", num_inference_steps=2, height=32, width=32, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images)

    got, want = run(ours), run(ref)
    assert float(np.abs(got - want).max()) <= 1e-4
    for pipe in (ref, ours):
        pipe.set_adapters("s")
    only_sgm = run(ours)
    assert float(np.abs(only_sgm - got).max()) > 1e-3
    assert float(np.abs(only_sgm - run(ref)).max()) <= 1e-4
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    original = {k: v.clone() for k, v in ours.text_encoder_2.state_dict().items()}
    ours.load_lora_weights(make_sdxl_lora(ours, "peft", seed=3), adapter_name="c")
    ours.unload_lora_weights()
    after = ours.text_encoder_2.state_dict()
    assert list(after) == list(original) and all(torch.equal(after[k], original[k]) for k in original)
