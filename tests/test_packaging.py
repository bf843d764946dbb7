"""a3jax as a user installs it: the wheel built from this tree, installed NON-editable into a fresh
virtual environment, trains and samples from a folder outside the source tree (the presets ship
inside the package; nothing is looked up relative to the checkout)."""

import os
import pathlib
import site
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args[:3]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding the built wheel (no pip): its dependencies are read from this test
    environment's site-packages through a .pth path entry, which does not activate the editable
    install found there (.pth files of a path entry are not processed)."""
    tmp = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT),
         "-w", str(tmp / "dist")])
    wheel = next((tmp / "dist").glob("a3jax-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    pathlib.Path(purelib, "a3jax_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-compile",
         str(wheel)])
    work = tmp / "elsewhere"
    work.mkdir()
    assert (venv / "bin" / "a3jax").is_file()
    return python, work


def test_the_installed_wheel_trains_and_samples_outside_the_source_tree(installed):
    python, work = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = run([str(python), "-c", "import a3jax, a3jax.configs.presets.tiny as t; print(a3jax.__file__)"],
                cwd=work, env=env).stdout.strip()
    assert str(ROOT) not in where and "site-packages" in where, where  # the wheel's copy, not the tree
    a3jax = [str(python.parent / "a3jax")]  # the console script the wheel installed
    workdir = work / "run"
    tiny = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
            "--config.model.n_kv_heads=1", "--config.model.ffn_dim=64", "--config.data.seq_len=32",
            "--config.train.batch_size=4", "--config.data.max_files=20", "--config.train.eval_rows=2",
            "--config.mesh.devices=1"]
    trained = run(a3jax + ["train", "--workdir", str(workdir), "--config", "tiny", "--config.train.steps=2",
                           "--no-progress"] + tiny, cwd=work, env=env)
    assert "finished at step 2" in trained.stdout
    assert (workdir / "checkpoints" / "2").is_dir()
    sampled = run(a3jax + ["sample", "--workdir", str(workdir), "--prompt", "def f(x):[gap:4]", "--seed", "1"],
                  cwd=work, env=env)
    assert "def f(x):" in sampled.stdout
