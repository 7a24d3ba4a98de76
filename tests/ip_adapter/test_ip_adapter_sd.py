"""IP-Adapter on SD 1.x classic pipelines: parity with diffusers' load_ip_adapter (plain and plus, .bin and
.safetensors, scales, two adapters, precomputed embeds, img2img), exact unload, Hub cache loading, errors."""
import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sd_folder, fill_hf_cache, tiny_unet_config
from tests.ip_adapter._tiny_ip import IMAGE_SIZE, build_ip_adapter_repo, plain_state_dict, reference_image

TOL = 1e-4
SUB = "models"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_sd")
    return {
        "sd": build_tiny_sd_folder(str(root / "sd")),
        "ip": build_ip_adapter_repo(str(root / "ip"), tiny_unet_config("sd"), subfolder=SUB),
    }


@pytest.fixture(scope="module")
def pipes(folders):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks

    out = {}
    for name, lib in (("ref", diffusers), ("ours", diffblocks)):
        for cls in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"):
            pipe = getattr(lib, cls).from_pretrained(folders["sd"], safety_checker=None)
            pipe.set_progress_bar_config(disable=True)
            out[(name, cls)] = pipe
    return out


@pytest.fixture
def ref(pipes):
    return pipes[("ref", "StableDiffusionPipeline")]


@pytest.fixture
def ours(pipes):
    return pipes[("ours", "StableDiffusionPipeline")]


@pytest.fixture(autouse=True)
def _unload(pipes):
    yield
    for pipe in pipes.values():
        pipe.unload_ip_adapter()


def run(pipe, **kw):
    kw.setdefault("num_inference_steps", 2)
    return np.asarray(pipe("a tiny photo", height=32, width=32, output_type="np",
                           generator=torch.Generator().manual_seed(0), **kw).images)


def diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize("weight_name", ["ip-adapter.bin", "ip-adapter.safetensors", "ip-adapter-plus.bin",
                                         "ip-adapter-plus.safetensors"])
def test_text2img_parity_scale_and_exact_unload(folders, ref, ours, weight_name):
    image = reference_image()
    before = run(ours)
    assert ours.image_encoder is None
    for pipe in (ref, ours):
        pipe.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name=weight_name)
    # the image encoder comes from <subfolder>/image_encoder, the feature extractor is created to its size
    assert type(ours.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert ours.config.image_encoder == ("transformers", "CLIPVisionModelWithProjection")
    assert ours.feature_extractor.crop_size["height"] == IMAGE_SIZE
    assert ours.unet.config.encoder_hid_dim_type == "ip_image_proj"
    kind = "IPAdapterPlusImageProjection" if "plus" in weight_name else "ImageProjection"
    assert type(ours.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == kind

    got, want = run(ours, ip_adapter_image=image), run(ref, ip_adapter_image=image)
    assert diff(got, want) <= TOL
    assert diff(got, before) > 1e-2  # the image prompt changes the result

    for pipe in (ref, ours):
        pipe.set_ip_adapter_scale(0.4)
    scaled = run(ours, ip_adapter_image=image)
    assert diff(scaled, run(ref, ip_adapter_image=image)) <= TOL
    assert diff(scaled, got) > 1e-3

    ours.unload_ip_adapter()
    assert ours.image_encoder is None and ours.config.image_encoder == (None, None)
    assert ours.feature_extractor is not None  # kept: the SD pipeline has a safety_checker slot that uses it
    assert ours.unet.encoder_hid_proj is None and ours.unet.config.encoder_hid_dim_type is None
    assert not any("IPAdapter" in type(p).__name__ for p in ours.unet.attn_processors.values())
    assert not any(".processor.to_k_ip" in k for k in ours.unet.state_dict())
    assert np.array_equal(run(ours), before)


def test_two_adapters_list_scales_and_block_scales(folders, ref, ours):
    images = [reference_image(0), reference_image(1)]
    names = ["ip-adapter-plus.safetensors", "ip-adapter-2.safetensors"]
    for pipe in (ref, ours):
        pipe.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name=names)
        pipe.set_ip_adapter_scale([0.8, 0.3])
    assert len(ours.unet.encoder_hid_proj.image_projection_layers) == 2
    got = run(ours, ip_adapter_image=images)
    assert diff(got, run(ref, ip_adapter_image=images)) <= TOL

    # block-wise scales: only the up block's middle attention layer, second adapter at 0.5
    config = [{"up": {"block_0": [0.0, 1.0, 0.0]}}, 0.5]
    for pipe in (ref, ours):
        pipe.set_ip_adapter_scale(config)
    theirs = {k: list(p.scale) for k, p in ref.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    mine = {k: list(p.scale) for k, p in ours.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert mine == theirs
    assert mine["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"] == [1.0, 0.5]
    assert mine["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"] == [0.0, 0.5]
    assert diff(run(ours, ip_adapter_image=images), run(ref, ip_adapter_image=images)) <= TOL


def test_precomputed_embeds_match_images(folders, ref, ours):
    image = reference_image(2)
    for pipe in (ref, ours):
        pipe.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter-plus.bin")
    theirs = ref.prepare_ip_adapter_image_embeds(image, None, torch.device("cpu"), 1, True)
    mine = ours.prepare_ip_adapter_image_embeds(image, None, torch.device("cpu"), 1, True)
    assert len(mine) == 1 and mine[0].shape == theirs[0].shape == (2, 1, 17, 32)
    assert torch.allclose(mine[0], theirs[0], atol=1e-6)
    from_image = run(ours, ip_adapter_image=image)
    from_embeds = run(ours, ip_adapter_image_embeds=theirs)
    assert diff(from_image, from_embeds) <= 1e-6
    assert diff(from_embeds, run(ref, ip_adapter_image_embeds=theirs)) <= TOL
    # two prompts x two images each: the embeds are repeated to every row, like diffusers
    batched = {name: np.asarray(pipe(["a tiny photo", "another one"], num_images_per_prompt=2, height=32, width=32,
                                     num_inference_steps=2, ip_adapter_image_embeds=theirs, output_type="np",
                                     generator=torch.Generator().manual_seed(0)).images)
               for name, pipe in (("ours", ours), ("ref", ref))}
    assert batched["ours"].shape == (4, 32, 32, 3)
    assert diff(batched["ours"], batched["ref"]) <= TOL
    # without guidance the embeds carry no negative half
    plain = ours.prepare_ip_adapter_image_embeds(image, None, torch.device("cpu"), 1, False)
    got = run(ours, ip_adapter_image_embeds=plain, guidance_scale=1.0)
    assert diff(got, run(ref, ip_adapter_image_embeds=plain, guidance_scale=1.0)) <= TOL


def test_img2img_parity_and_from_pipe(folders, pipes):
    """diffusers' img2img pipeline with the adapter vs ours built with from_pipe from a text2img pipeline that
    holds it: the UNet (with its IP-Adapter), the image encoder and the feature extractor are shared."""
    from diffblocks import StableDiffusionImg2ImgPipeline

    image = reference_image(3)
    init = reference_image(4, size=32)
    source = pipes[("ours", "StableDiffusionPipeline")]
    source.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.safetensors")
    derived = StableDiffusionImg2ImgPipeline.from_pipe(source)
    derived.set_progress_bar_config(disable=True)
    assert derived.unet is source.unet and derived.image_encoder is source.image_encoder
    assert derived.feature_extractor is source.feature_extractor
    pipes[("ref", "StableDiffusionImg2ImgPipeline")].load_ip_adapter(
        folders["ip"], subfolder=SUB, weight_name="ip-adapter.safetensors")
    outs = {}
    for name in ("ref", "ours"):
        pipe = derived if name == "ours" else pipes[("ref", "StableDiffusionImg2ImgPipeline")]
        outs[name] = np.asarray(pipe("a tiny photo", image=init, strength=0.7, num_inference_steps=3,
                                     ip_adapter_image=image, output_type="np",
                                     generator=torch.Generator().manual_seed(0)).images)
    assert outs["ours"].shape == (1, 32, 32, 3)
    assert diff(outs["ours"], outs["ref"]) <= TOL


def test_load_by_repo_id_from_hf_cache_and_state_dict(tmp_path, folders, ours, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "cache")
    fill_hf_cache(cache, "tiny-org/ip-adapter", folders["ip"])
    ours.load_ip_adapter("tiny-org/ip-adapter", subfolder=SUB, weight_name="ip-adapter.bin", cache_dir=cache)
    from diffblocks.modular_pipelines.modular_pipeline_utils import get_load_id

    assert get_load_id(ours.image_encoder) == f"tiny-org/ip-adapter|{SUB}/image_encoder|null|null"
    from_hub = run(ours, ip_adapter_image=reference_image())
    ours.unload_ip_adapter()

    # a state dict (with the image encoder already registered) gives the same image
    state = torch.load(f"{folders['ip']}/{SUB}/ip-adapter.bin", weights_only=True)
    ours.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.bin")  # registers the encoder
    ours.load_ip_adapter(state, subfolder=None, weight_name=None)
    assert np.array_equal(run(ours, ip_adapter_image=reference_image()), from_hub)


def _layers(pipe):
    return [(m.to_k.out_features, m.to_k.in_features) for n, m in pipe.unet.named_modules() if n.endswith("attn2")]


def test_errors(folders, ours):
    image = reference_image()
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        run(ours, ip_adapter_image=image)
    with pytest.raises(ValueError, match="No IP-Adapter is loaded"):
        ours.set_ip_adapter_scale(0.5)
    with pytest.raises(ValueError, match="Cannot leave both `ip_adapter_image` and `ip_adapter_image_embeds`"):
        run(ours, ip_adapter_image=image, ip_adapter_image_embeds=[torch.zeros(2, 1, 24)])
    with pytest.raises(ValueError, match="has to be of type `list`"):
        run(ours, ip_adapter_image_embeds=torch.zeros(2, 1, 24))
    with pytest.raises(ValueError, match="list of 3D or 4D tensors but is 2D"):
        run(ours, ip_adapter_image_embeds=[torch.zeros(2, 24)])
    with pytest.raises(ValueError, match="must have the same length"):
        ours.load_ip_adapter(folders["ip"], subfolder=[SUB, SUB, SUB], weight_name=["a.bin", "b.bin"])
    with pytest.raises(ValueError, match=r"Required keys are \(`image_proj` and `ip_adapter`\) missing"):
        ours.load_ip_adapter({"foo": torch.zeros(1)}, subfolder=None, weight_name=None)
    with pytest.raises(ValueError, match="state dict"):
        ours.load_ip_adapter(plain_state_dict([(64, 32)] * 5, 32, 0), subfolder=None, weight_name=None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.bin", bogus=1)
    # weights made for another UNet (wrong cross-attention width): nothing is changed
    wrong = plain_state_dict([(64, 48)] * 5, 48, 0)
    ours.register_modules(image_encoder=None)
    with pytest.raises(ValueError, match="different UNet"):
        ours.load_ip_adapter(wrong, subfolder=None, weight_name=None, image_encoder_folder=None)
    assert ours.unet.encoder_hid_proj is None

    # no image encoder (image_encoder_folder=None): images cannot be encoded, precomputed embeds still work
    ours.load_ip_adapter(plain_state_dict(_layers(ours), 32, 0), subfolder=None, weight_name=None,
                         image_encoder_folder=None)
    with pytest.raises(ValueError, match="needs the `image_encoder` component"):
        run(ours, ip_adapter_image=image)
    assert run(ours, ip_adapter_image_embeds=[torch.randn(2, 1, 24)]).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="negative and the positive embeddings"):
        run(ours, ip_adapter_image_embeds=[torch.randn(3, 1, 24)])

    ours.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.bin")
    with pytest.raises(ValueError, match="same length as the number of IP Adapters. Got 2 images and 1"):
        run(ours, ip_adapter_image=[image, image])
    with pytest.raises(ValueError, match="Cannot assign 2 scale_configs to 1 IP-Adapter"):
        ours.set_ip_adapter_scale([0.5, 0.5])
    with pytest.raises(ValueError, match="no attention block 'block_0'"):
        ours.set_ip_adapter_scale({"down": {"block_0": 1.0}})
    with pytest.raises(ValueError, match="requires the keyword argument `image_embeds`"):
        run(ours)  # an IP-Adapter UNet needs an image prompt, like diffusers'
