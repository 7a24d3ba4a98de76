"""generate / info / blocks end to end on the embedded model, as subprocesses."""
import json
import os
import subprocess
import sys

from PIL import Image


def run_cli(*args, cwd=None, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "diffblocks", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_generate_writes_pngs_with_parameters(tmp_path):
    result = run_cli("generate", "a handwritten digit seven", "--steps", "4", "--seed", "3", "--num-images", "2",
                     "--scheduler", "euler", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert [os.path.basename(p) for p in paths] == ["a-handwritten-digit-seven-3-0.png", "a-handwritten-digit-seven-3-1.png"]
    image = Image.open(paths[1])
    params = json.loads(image.text["parameters"])
    assert params["prompt"] == "a handwritten digit seven"
    assert params["steps"] == 4 and params["seed"] == 3 and params["index"] == 1
    assert params["scheduler"] == "EulerDiscreteScheduler"
    assert params["size"] == f"{image.width}x{image.height}"
    assert "Loading pipeline components" not in result.stderr  # not a terminal: bars stay quiet


def test_generate_img2img_and_progress_flag(tmp_path):
    first = run_cli("generate", "3", "--steps", "2", "--out", str(tmp_path))
    init = first.stdout.split()[0]
    result = run_cli("generate", "8", "--image", init, "--strength", "0.5", "--steps", "4", "--progress",
                     "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    params = json.loads(Image.open(result.stdout.split()[0]).text["parameters"])
    assert params["pipeline"] == "StableDiffusionImg2ImgPipeline" and params["strength"] == 0.5
    assert "Loading pipeline components" in result.stderr


def test_info_describes_components():
    result = run_cli("info", "diffblocks/tiny-digits")
    assert result.returncode == 0, result.stderr
    assert "pipeline class: StableDiffusionPipeline" in result.stdout
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert name in result.stdout
    assert "diffusers.UNet2DConditionModel" in result.stdout and "MB" in result.stdout


def test_info_missing_folder_is_one_line_error(tmp_path):
    result = run_cli("info", str(tmp_path / "nothing" / "here" / "deep"))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("diffblocks: error:")


def test_blocks_prints_inputs_and_outputs():
    result = run_cli("blocks", "diffblocks/tiny-digits")
    assert result.returncode == 0, result.stderr
    assert "text_encoder" in result.stdout and "denoise" in result.stdout
    assert "Inputs:" in result.stdout and "prompt" in result.stdout


def test_generate_with_lora_weights_changes_the_image_and_records_them(tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from diffblocks import StableDiffusionPipeline
    from diffblocks.default_models import default_model_path
    from tests.loaders.test_lora import make_lora

    pipe = StableDiffusionPipeline.from_pretrained(default_model_path())
    lora = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in make_lora(pipe, "peft", seed=0, scale=0.5).items()}, str(lora))
    args = ("generate", "a handwritten digit two", "--steps", "4", "--seed", "1")
    # the CLI process uses this process's intra-op thread count (other test packages set 1): a random LoRA this
    # strong makes the model sensitive to float rounding, which the thread count changes
    same_threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    plain = run_cli(*args, "--out", str(tmp_path / "plain"), env_extra=same_threads)
    weighted = run_cli(*args, "--lora", f"{lora}:0.8", "--out", str(tmp_path / "lora"), env_extra=same_threads)
    assert plain.returncode == 0 and weighted.returncode == 0, weighted.stderr
    a = np.asarray(Image.open(plain.stdout.split()[0]), dtype=np.float32)
    b = Image.open(weighted.stdout.split()[0])
    assert np.abs(a - np.asarray(b, dtype=np.float32)).max() > 8  # the adapter really applies
    assert json.loads(b.text["parameters"])["lora"] == [f"{lora}:0.8"]
    # the same through the Python API: load + set_adapters(0.8) gives the same pixels
    pipe.load_lora_weights(str(lora), adapter_name="lora_0")
    pipe.set_adapters(["lora_0"], adapter_weights=[0.8])
    pipe.set_progress_bar_config(disable=True)
    want = pipe("a handwritten digit two", num_inference_steps=4,
                generator=torch.Generator().manual_seed(1)).images[0]
    assert np.abs(np.asarray(want, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max() <= 1
    missing = run_cli(*args, "--lora", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "--lora: file not found" in missing.stderr
