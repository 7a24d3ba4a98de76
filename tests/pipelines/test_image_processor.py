"""VaeImageProcessor parity with diffusers' VaeImageProcessor."""
import numpy as np
import PIL.Image
import pytest
import torch

from diffblocks.image_processor import VaeImageProcessor


def _pair(**kw):
    from diffusers.image_processor import VaeImageProcessor as Ref

    return VaeImageProcessor(**kw), Ref(**kw)


def _pil(w=37, h=29, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return PIL.Image.fromarray(arr).convert(mode)


def _np(b=2, h=29, w=37, c=3, seed=1):
    return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


CASES = {
    "pil": lambda: _pil(),
    "pil_list": lambda: [_pil(seed=1), _pil(seed=2)],
    "np_batch": lambda: _np(),
    "np_single": lambda: _np()[0],
    "np_list": lambda: [_np()[0], _np(seed=3)[0]],
    "pt_batch": lambda: torch.from_numpy(_np()).permute(0, 3, 1, 2).contiguous(),
    "pt_single": lambda: torch.from_numpy(_np()[0]).permute(2, 0, 1).contiguous(),
    "pt_list": lambda: [torch.from_numpy(_np(seed=s)[0]).permute(2, 0, 1).contiguous() for s in (4, 5)],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("size", [None, (24, 40)])
def test_preprocess_matches_diffusers(case, size):
    ours, ref = _pair()
    h, w = size if size else (None, None)
    a = ours.preprocess(CASES[case](), height=h, width=w)
    b = ref.preprocess(CASES[case](), height=h, width=w)
    assert a.shape == b.shape
    assert a.shape[2] % 8 == 0 and a.shape[3] % 8 == 0
    assert a.dtype == b.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["fill", "crop"])
def test_preprocess_resize_modes_match_diffusers(mode):
    ours, ref = _pair()
    for size in ((16, 48), (48, 16)):
        a = ours.preprocess(_pil(), height=size[0], width=size[1], resize_mode=mode)
        b = ref.preprocess(_pil(), height=size[0], width=size[1], resize_mode=mode)
        assert a.shape == (1, 3, *size)
        assert torch.equal(a, b)


def test_preprocess_crops_coords_and_latents_passthrough():
    ours, ref = _pair()
    a = ours.preprocess(_pil(), crops_coords=(2, 3, 30, 27))
    b = ref.preprocess(_pil(), crops_coords=(2, 3, 30, 27))
    assert a.shape == (1, 3, 24, 24) and torch.equal(a, b)
    latents = torch.randn(1, 4, 5, 5)
    assert torch.equal(ours.preprocess(latents), latents)


def test_mask_processor_binarizes_and_grayscales_like_diffusers():
    kw = dict(do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    ours, ref = _pair(**kw)
    for make in (lambda: _pil(mode="L"), lambda: _pil(), lambda: _np(c=1)[..., 0], lambda: torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))):
        a, b = ours.preprocess(make()), ref.preprocess(make())
        assert a.shape == b.shape and a.shape[1] == 1
        assert torch.equal(a, b)
        assert set(a.unique().tolist()) <= {0.0, 1.0}


def test_convert_rgb_and_normalised_input_warning():
    ours, ref = _pair(do_convert_rgb=True)
    a, b = ours.preprocess(_pil(mode="L")), ref.preprocess(_pil(mode="L"))
    assert a.shape == (1, 3, 24, 32) and torch.equal(a, b)
    proc = VaeImageProcessor()
    t = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.warns(FutureWarning, match="values in \\[-1, 1\\]"):
        out = proc.preprocess(t)
    assert torch.equal(out, t)  # used as is


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_postprocess_matches_diffusers(output_type):
    ours, ref = _pair()
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    a = ours.postprocess(x.clone(), output_type=output_type)
    b = ref.postprocess(x.clone(), output_type=output_type)
    if output_type == "pil":
        assert len(a) == 2 and a[0].size == (24, 16)
        for i, j in zip(a, b):
            assert np.array_equal(np.asarray(i), np.asarray(j))
    elif output_type == "np":
        assert a.shape == (2, 16, 24, 3) and np.array_equal(a, b)
    else:
        assert torch.equal(a, b)
    d = ours.postprocess(x.clone(), output_type="pt", do_denormalize=[True, False])
    assert torch.equal(d, ref.postprocess(x.clone(), output_type="pt", do_denormalize=[True, False]))


def test_get_crop_region_and_overlay_match_diffusers():
    ours, ref = _pair()
    mask = PIL.Image.new("L", (64, 48), 0)
    mask.paste(255, (20, 10, 30, 20))
    for pad in (0, 4):
        assert ours.get_crop_region(mask, 64, 32, pad=pad) == ref.get_crop_region(mask, 64, 32, pad=pad)
        assert ours.get_crop_region(mask, 16, 64, pad=pad) == ref.get_crop_region(mask, 16, 64, pad=pad)
    init, image = _pil(64, 48, seed=1), _pil(64, 48, seed=2)
    a = ours.apply_overlay(mask, init, image)
    b = ref.apply_overlay(mask, init, image)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    crop = ours.get_crop_region(mask, 64, 48, pad=2)
    a = ours.apply_overlay(mask, init, _pil(16, 16, seed=3), crop_coords=crop)
    b = ref.apply_overlay(mask, init, _pil(16, 16, seed=3), crop_coords=crop)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(ours.blur(mask, 2)), np.asarray(ref.blur(mask, 2)))


def test_config_round_trip_and_scale_factor(tmp_path):
    proc = VaeImageProcessor(vae_scale_factor=16, do_normalize=False)
    proc.save_config(tmp_path)
    loaded = VaeImageProcessor.from_config(VaeImageProcessor.load_config(tmp_path))
    assert loaded.config.vae_scale_factor == 16 and loaded.config.do_normalize is False
    out = loaded.preprocess(_pil(40, 40))
    assert out.shape == (1, 3, 32, 32)
    assert float(out.min()) >= 0.0  # no normalisation


def test_errors():
    with pytest.raises(ValueError, match="cannot both be True"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ValueError, match="`resample` must be one of"):
        VaeImageProcessor(resample="magic")
    proc = VaeImageProcessor()
    with pytest.raises(ValueError, match="unsupported format \\(str\\)"):
        proc.preprocess("image.png")
    with pytest.raises(ValueError, match="unsupported format"):
        proc.preprocess(np.zeros((1, 1, 2, 2, 3)))
    with pytest.raises(ValueError, match="`output_type` must be one of \\['pil', 'np', 'pt', 'latent'\\], got 'jpg'"):
        proc.postprocess(torch.zeros(1, 3, 8, 8), output_type="jpg")
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        proc.postprocess(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="needs PIL images, got Tensor"):
        proc.preprocess(torch.rand(1, 3, 8, 8), height=8, width=8, resize_mode="fill")
    with pytest.raises(ValueError, match="`height` must be a positive int"):
        proc.preprocess(_pil(), height=-8)
    with pytest.raises(ValueError, match="mixes kinds"):
        proc.preprocess([_pil(), _np()[0]])
    with pytest.raises(ValueError, match="`resize_mode` must be one of"):
        proc.preprocess(_pil(), resize_mode="stretch")
