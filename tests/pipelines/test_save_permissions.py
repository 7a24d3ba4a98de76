"""Saved pipeline folders get ordinary permissions (the staging folder comes from mkdtemp, which is 0700)."""
import os

from diffblocks import DiffusionPipeline, ModularPipeline


def _modes(root):
    mask = os.umask(0o022)
    os.umask(mask)
    bad = []
    for folder, _, files in os.walk(root):
        if os.stat(folder).st_mode & 0o777 != 0o777 & ~mask:
            bad.append(folder)
        bad += [os.path.join(folder, f) for f in files if os.stat(os.path.join(folder, f)).st_mode & 0o777 != 0o666 & ~mask]
    return bad


def test_classic_and_modular_saves_have_umask_permissions(tiny_sd_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.save_pretrained(tmp_path / "classic")
    assert _modes(tmp_path / "classic") == []
    modular = ModularPipeline.from_pretrained(str(tmp_path / "classic"))
    modular.load_components(names=["vae"])
    modular.save_pretrained(tmp_path / "modular")
    assert _modes(tmp_path / "modular") == []
