"""The built wheel: what it puts into site-packages and whether its commands resolve to code it ships.

The tests and CI run an editable install, whose import finder maps names onto the checkout, so a wheel that installs
the wrong top-level names, or whose entry points name modules it does not contain, passes every other test."""

import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
# Importable from a directory of unpacked files with the interpreter's site-packages, but without `site`'s .pth files,
# so the editable install's finder cannot answer for the wheel.
IMPORT_FROM_WHEEL = """
import importlib, json, sys
found = {}
for value in sys.argv[1:]:
    module_name, _, attribute = value.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute)), value
    found[value] = module.__file__
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel` builds offline from a copy of the checkout (a stale `build/` in the checkout would leak
    files of an earlier layout into it)."""
    for tool in ("pip", "setuptools"):
        if importlib.util.find_spec(tool) is None:
            pytest.skip(f"building the wheel offline (--no-build-isolation) needs {tool} in this interpreter")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    skipped = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(REPO, source, ignore=skipped)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(root / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (root / "dist").glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def entry_points(wheel: zipfile.ZipFile) -> dict[str, dict[str, str]]:
    """Group -> name -> `module:attribute`, from the wheel's `entry_points.txt`."""
    (name,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # entry point names are case-sensitive
    parser.read_string(wheel.read(name).decode())
    return {group: dict(parser[group]) for group in parser.sections()}


def test_every_top_level_name_carries_the_project_name(wheel):
    top_level = {PurePosixPath(name).parts[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert not top_level & {"conversion", "examples"}
    assert {"hicom_transformers", "modeling_hicom", "processing_hicom"} <= top_level
    assert all(name == "hicom_transformers" or name.endswith("_hicom") for name in top_level), top_level


def test_every_entry_point_names_a_module_in_the_wheel(wheel):
    files = set(wheel.namelist())
    points = entry_points(wheel)
    assert {"hicom-convert", "hicom-video-qa", "hicom-eval-table"} <= set(points["console_scripts"])
    for group, named in points.items():
        for name, value in named.items():
            module = value.partition(":")[0].replace(".", "/")
            assert {f"{module}.py", f"{module}/__init__.py"} & files, (group, name, value)


def test_commands_import_from_the_unpacked_wheel(wheel, tmp_path):
    """Every console script's function imports from the wheel's own files alone (lmms-eval's and vLLM's plugin
    entry points import those engines, which this venv may not have: the test above checks their modules ship)."""
    unpacked = tmp_path / "site"
    wheel.extractall(unpacked)
    values = list(entry_points(wheel)["console_scripts"].values())
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    result = subprocess.run(
        [sys.executable, "-S", "-c", IMPORT_FROM_WHEEL, *values],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(unpacked), *site_packages]), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(Path(file).is_relative_to(unpacked) for file in found.values()), found


def test_the_embedded_demo_ships_its_assets(wheel):
    """`hicom-video-qa` with no `--model` builds its model from `examples/demo_assets`."""
    assets = REPO / "examples" / "demo_assets"
    expected = {f"hicom_transformers/examples/demo_assets/{path.relative_to(assets).as_posix()}"
                for path in assets.rglob("*") if path.is_file()}
    assert expected and expected <= set(wheel.namelist())
