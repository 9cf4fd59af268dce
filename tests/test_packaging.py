"""The wheel must contain every package and the shipped weights."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import learned_optim as lo

REPO = Path(__file__).resolve().parent.parent


def _declared_packages():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}


def test_every_package_is_declared_in_setup_cfg():
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "learned_optim").rglob("__init__.py")}
    # Mapped from top-level folders: weights/ and benchmarks/ (for `learned-optim bench`).
    assert found | {"learned_optim.pretrained", "learned_optim.benchmarks"} == _declared_packages()


def test_console_script_is_declared():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    assert "learned-optim = learned_optim.cli:main" in config["options.entry_points"]["console_scripts"]


@pytest.mark.slow
def test_installed_wheel_finds_shipped_weights_by_name(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "data", "runs", "*.egg-info", "build"))
    lo.RNNprop([torch.nn.Parameter(torch.zeros(1))], hidden_size=3, num_layers=1).save_pretrained(
        source / "weights" / "wheel-test", description="packaged"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", "."],
        cwd=source,
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "learned_optim/pretrained/wheel-test/model.safetensors" in names
    assert "learned_optim/meta/tasks/data.py" in names
    assert "learned_optim/optimizers/celo2_kernel.cpp" in names  # Celo2's CPU kernel builds from it
    assert "learned_optim/benchmarks/cli.py" in names and not any("benchmarks/results" in n for n in names)
    developer_tools = [n for n in names if n.startswith("tools/") or "/tools/" in n or "meta_speed" in n]
    assert developer_tools == [], developer_tools  # tools/ stays in the checkout

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", tmp_path / "site", wheel], check=True
    )
    env = {k: v for k, v in os.environ.items() if k != "LEARNED_OPTIM_WEIGHTS"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    code = "import learned_optim as lo; print(lo.__file__); print([e['name'] for e in lo.list_pretrained()])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    location, names_listed = out.stdout.splitlines()
    assert location.startswith(str(tmp_path / "site")) and "'wheel-test'" in names_listed
    bench_help = subprocess.run(
        [sys.executable, "-m", "learned_optim", "bench", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bench_help.returncode == 0 and "quick" in bench_help.stdout, bench_help.stderr


def test_every_registered_architecture_is_public_with_its_config():
    for name, cls in lo.ARCHITECTURES.items():
        assert cls.architecture == name
        for public in (cls, cls.Config):
            assert getattr(lo, public.__name__) is public and public.__name__ in lo.__all__


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment():
    ci = (REPO / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("README_TEST_COMMAND="))
    command = command.partition("=")[2].strip("'")
    assert command in (REPO / "README.md").read_text()
    assert "-m venv" in ci and 'eval "$README_TEST_COMMAND"' in ci


def test_readme_says_how_to_keep_a_cpu_only_torch():
    assert "download.pytorch.org/whl/cpu" in (REPO / "README.md").read_text()


def test_every_relative_link_in_the_documentation_resolves():
    import re

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the documentation")
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    broken = []
    for name in listed.stdout.split():
        page = REPO / name
        for link in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in link and not (page.parent / link).exists():
                broken.append(f"{name}: {link}")
    assert not broken, broken
