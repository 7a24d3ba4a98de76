"""The command line, driven as a user drives it: a subprocess, exit codes and one-line errors."""
import os
import subprocess
import sys

import pytest

from diffblocks.cli import CLIError, SCHEDULER_ALIASES, build_parser, parse_lora, parse_size


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "diffblocks", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_every_option_with_defaults():
    result = run_cli("generate", "--help")
    assert result.returncode == 0
    for option in ("--model", "--negative", "--steps", "--guidance", "--scheduler", "--seed", "--size", "--num-images",
                   "--image", "--strength", "--mask", "--lora", "--dtype", "--device", "--out"):
        assert option in result.stdout
    assert "(default: 20)" in result.stdout and "(default: 0.8)" in result.stdout and "(default: out)" in result.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "a digit", "--size", "13x8"], "--size: width and height must be positive multiples of 8, got 13x8"),
        (["generate", "a digit", "--size", "big"], "--size: expected WxH"),
        (["generate", "a digit", "--scheduler", "nope"], "--scheduler: unknown scheduler 'nope'; choose one of: ddim"),
        (["generate", "a digit", "--image", "missing.png"], "--image: file not found: missing.png"),
        (["generate", "a digit", "--steps", "0"], "--steps: must be at least 1, got 0"),
        (["generate", "a digit", "--strength", "1.5", "--image", __file__], "--strength: must be in [0, 1], got 1.5"),
        (["generate", "a digit", "--lora", "nothere.safetensors:0.5"], "--lora: file not found: nothere.safetensors"),
        (["generate", "a digit", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_parsers_unit():
    assert parse_size("64x32") == (64, 32)
    assert parse_size(None) is None
    with pytest.raises(CLIError, match="multiples of 8"):
        parse_size("60x32")
    with pytest.raises(CLIError, match="file not found"):
        parse_lora("x.safetensors")
    assert parse_lora(__file__ + ":0.25") == (__file__, 0.25)
    assert parse_lora(__file__) == (__file__, 1.0)
    args = build_parser().parse_args(["generate", "p", "--no-progress"])
    assert args.progress is False
    assert "dpm++2m-karras" in SCHEDULER_ALIASES
