"""randn_tensor parity with diffusers and the image utilities."""
import os

import numpy as np
import PIL.Image
import pytest
import torch

from diffblocks.utils import export_to_gif, load_image, make_image_grid, numpy_to_pil, pt_to_pil, randn_tensor


def _gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, None])
def test_randn_single_generator_matches_diffusers(dtype):
    from diffusers.utils.torch_utils import randn_tensor as ref

    ours = randn_tensor((2, 4, 8, 8), generator=_gen(3), dtype=dtype)
    theirs = ref((2, 4, 8, 8), generator=_gen(3), dtype=dtype)
    assert ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)


def test_randn_list_of_generators_matches_diffusers():
    from diffusers.utils.torch_utils import randn_tensor as ref

    ours = randn_tensor((3, 4, 8, 8), generator=[_gen(1), _gen(2), _gen(3)], device="cpu")
    theirs = ref((3, 4, 8, 8), generator=[_gen(1), _gen(2), _gen(3)], device=torch.device("cpu"))
    assert torch.equal(ours, theirs)
    # item i depends only on generator i
    alone = randn_tensor((1, 4, 8, 8), generator=_gen(2))
    assert torch.equal(ours[1:2], alone)
    # a list of one generator is the same as the generator itself (full-shape draw)
    assert torch.equal(randn_tensor((2, 3), generator=[_gen(5)]), randn_tensor((2, 3), generator=_gen(5)))


def test_randn_cpu_generator_with_other_device_draws_on_cpu():
    # "meta" stands in for an accelerator: the draw must happen on the CPU, then move
    out = randn_tensor((2, 3), generator=_gen(0), device="meta")
    assert out.device.type == "meta"
    assert out.shape == (2, 3)


def test_randn_without_generator_is_random_and_shaped():
    out = randn_tensor([1, 2, 3], device=torch.device("cpu"), dtype=torch.float64)
    assert out.shape == (1, 2, 3) and out.dtype == torch.float64


def test_randn_errors():
    with pytest.raises(ValueError, match="2 generators but the batch size"):
        randn_tensor((3, 2), generator=[_gen(0), _gen(1)])
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        randn_tensor((1, 2), generator=3)
    with pytest.raises(TypeError, match="`shape`"):
        randn_tensor("1,2")
    with pytest.raises(ValueError, match="empty list"):
        randn_tensor((1, 2), generator=[])


def test_numpy_to_pil_and_pt_to_pil_match_diffusers():
    from diffusers.utils import numpy_to_pil as ref_np, pt_to_pil as ref_pt

    rng = np.random.default_rng(0)
    arr = rng.random((2, 8, 8, 3)).astype(np.float32)
    for a, b in zip(numpy_to_pil(arr), ref_np(arr)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    gray = numpy_to_pil(arr[..., :1])
    assert gray[0].mode == "L" and gray[0].size == (8, 8)
    t = torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1
    for a, b in zip(pt_to_pil(t), ref_pt(t)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="3 or 4 dimensions"):
        numpy_to_pil(np.zeros((2, 2)))


def test_load_image_path_pil_exif_and_convert(tmp_path):
    img = PIL.Image.new("RGBA", (6, 4), (10, 20, 30, 40))
    path = tmp_path / "a.png"
    img.save(path)
    loaded = load_image(str(path))
    assert loaded.mode == "RGB" and loaded.size == (6, 4)
    assert loaded.getpixel((0, 0)) == (10, 20, 30)
    assert load_image(path).size == (6, 4)  # os.PathLike
    assert load_image(img, convert_method=lambda im: im.convert("L")).mode == "L"
    # EXIF orientation 6 (rotate 90) is applied like diffusers does
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    jpg = tmp_path / "r.jpg"
    PIL.Image.new("RGB", (6, 4)).save(jpg, exif=exif)
    assert load_image(str(jpg)).size == (4, 6)


def test_load_image_errors(tmp_path):
    with pytest.raises(ValueError, match="is not an existing file"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="got int"):
        load_image(3)
    with pytest.raises(TypeError, match="convert_method"):
        load_image(PIL.Image.new("RGB", (2, 2)), convert_method="RGB")


def test_load_image_url_uses_http(monkeypatch):
    import io

    from diffblocks.utils import image_utils

    buf = io.BytesIO()
    PIL.Image.new("RGB", (3, 5), (1, 2, 3)).save(buf, format="PNG")
    seen = []
    monkeypatch.setattr(image_utils, "_fetch_url", lambda url: seen.append(url) or buf.getvalue())
    img = load_image("https://example.invalid/x.png")
    assert seen == ["https://example.invalid/x.png"] and img.size == (3, 5)


def test_make_image_grid_matches_diffusers():
    from diffusers.utils import make_image_grid as ref

    imgs = [PIL.Image.new("RGB", (4, 3), (i * 40, 0, 0)) for i in range(6)]
    ours, theirs = make_image_grid(imgs, rows=2, cols=3), ref(imgs, rows=2, cols=3)
    assert ours.size == (12, 6)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert make_image_grid(imgs, 3, 2, resize=5).size == (10, 15)
    with pytest.raises(ValueError, match="rows \\* cols = 2 \\* 2 = 4"):
        make_image_grid(imgs, 2, 2)
    with pytest.raises(ValueError, match="`rows` must be a positive int"):
        make_image_grid(imgs, 0, 3)


def test_export_to_gif(tmp_path):
    frames = [PIL.Image.new("RGB", (4, 4), (i * 60, 0, 0)) for i in range(3)]
    path = export_to_gif(frames, str(tmp_path / "a.gif"), fps=5)
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.info["duration"] == 200
    tmp = export_to_gif(frames)
    assert tmp.endswith(".gif") and os.path.getsize(tmp) > 0
    os.remove(tmp)
    with pytest.raises(ValueError, match="`fps`"):
        export_to_gif(frames, fps=0)


def test_utils_table_resolves_every_name():
    import diffblocks.utils as utils

    for name in utils.__all__:
        assert getattr(utils, name) is not None, name
    from diffblocks.utils.torch_utils import randn_tensor as direct

    assert utils.randn_tensor is direct  # the diffusers import path `utils.torch_utils.randn_tensor` works too
    assert utils.PIL_INTERPOLATION["lanczos"] == PIL.Image.Resampling.LANCZOS


def test_logging_module_like_diffusers(tiny_classes):
    import logging as std

    from diffblocks.utils import logging

    from .conftest import TinyPipeline, make_components

    before = std.getLogger("diffblocks").level
    try:
        logging.set_verbosity_error()
        assert logging.get_verbosity() == std.ERROR
        assert std.getLogger("diffblocks.pipelines.pipeline_utils").getEffectiveLevel() == std.ERROR
        logging.set_verbosity("info")
        assert logging.get_verbosity() == std.INFO
        assert logging.get_logger("diffblocks.x").name == "diffblocks.x"
        with pytest.raises(ValueError, match="`verbosity` must be one of"):
            logging.set_verbosity("loud")
    finally:
        std.getLogger("diffblocks").setLevel(before)
    pipe = TinyPipeline(**make_components())
    try:
        logging.disable_progress_bar()
        assert pipe.progress_bar(total=2).disable is True
        pipe.set_progress_bar_config(disable=False)  # an explicit pipeline setting wins
        assert pipe.progress_bar(total=2).disable is False
    finally:
        logging.enable_progress_bar()
