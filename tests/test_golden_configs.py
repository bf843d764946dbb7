"""Golden configs: every config file in experiments/ resolves (loaded, parsed, defaults filled) to
the JSON committed in tests/golden/. A changed default or preset shows up as a reviewable diff of
those files. After an intended change, regenerate them with

    A3JAX_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_configs.py
"""

import json
import os
import pathlib

import pytest

from a3jax.configs import load_config, load_config_module, parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
FILES = sorted(p for p in (ROOT / "experiments").glob("*.py") if hasattr(load_config_module(p), "get_config"))


def resolved(path: pathlib.Path) -> str:
    return json.dumps(parse(load_config(path)).to_dict(), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_resolves_to_its_golden_json(path):
    golden = GOLDEN / f"{path.stem}.json"
    text = resolved(path)
    if os.environ.get("A3JAX_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"{golden} is missing; run A3JAX_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), (f"{path.name} no longer resolves to {golden.name}; if the change "
                                        "is intended, regenerate the golden files (see the module doc)")


def test_every_golden_file_has_its_experiment():
    names = {p.stem for p in FILES}
    stale = sorted(p.name for p in GOLDEN.glob("*.json") if p.stem not in names)
    assert not stale, f"golden files without an experiments/ config: {stale}; delete them"
    assert {"tiny", "llama3_1b", "llama3_8b", "adapt_tiny"} <= names


def test_a_changed_default_is_caught(monkeypatch):
    """The check has power: a new default in a typed section changes the resolved JSON of a config
    that leaves the key unset."""
    from a3jax.configs import sections

    path = ROOT / "experiments" / "ablation_micro.py"
    config = load_config(path)
    del config.train["max_bad_steps"]  # taken from the section's default
    before = json.dumps(parse(config).to_dict(), sort_keys=True)
    monkeypatch.setattr(sections.TrainConfig.__dataclass_fields__["max_bad_steps"], "default", 11)
    after = json.dumps(parse(config).to_dict(), sort_keys=True)
    assert before != after and '"max_bad_steps": 11' in after


def test_the_tiny_preset_names_every_typed_field():
    """Overrides refuse keys a config does not hold, so the base preset must hold every field of
    every typed section (else a field could not be set from the command line)."""
    import dataclasses

    from a3jax.configs import load_config_file
    from a3jax.configs.sections import DataConfig, MeshConfig, OrdersConfig, TrainConfig

    config = load_config_file("tiny")
    for cls, name in ((DataConfig, "data"), (OrdersConfig, "orders"), (MeshConfig, "mesh"), (TrainConfig, "train")):
        missing = {f.name for f in dataclasses.fields(cls)} - set(config[name].keys())
        assert not missing, f"the tiny preset lacks {name}.{sorted(missing)}"
