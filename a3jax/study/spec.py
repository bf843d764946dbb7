"""The sweep file: its points, its post-training eval settings, and each point's parsed config.

A sweep file is a config file (get_config() gives the base config) that also defines
  get_sweep() -> [{"name": "a3_direct-s0", "overrides": {"model.variant": "a3", "seed": 0, ...}}, ...]
      ordered points; dotted keys are applied like --config.KEY=VALUE (values may be strings or
      Python values); optional "group" names the point without its seed (default: the name
      without a trailing -sN / _seedN), which the report averages over.
  get_eval() -> {"orders": [...], "nll_rows": N, "nll_batch_size": B,
                 "infill": {"span": T, "num_examples": N, "seed": S, "temperature": 0.0,
                            "batch_size": B, "plans": ["ar", "blocks(4)", ...]},
                 "spans": {"per_kind": 16, "seed": 0, "plan": "ar"},            (optional: natural spans)
                 "speculative": {"k": 4, "temperature": 1.0, "seed": 0}}        (optional: on those spans)
  BPE_VOCAB = N (optional): `a3jax sweep` trains a byte-level BPE of N tokens on the base config's
      training files into ROOT/tokenizer.json and runs every point on it (as the demo does).

This module only reads and checks; it imports nothing of a3jax at import time (the command line
builds its parser from it cheaply).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import pathlib
import re
from collections.abc import Sequence

from a3jax.errors import UserError

POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SEED_SUFFIX = re.compile(r"[-_](?:s|seed)\d+$")
EVAL_KEYS = {"orders", "nll_rows", "nll_batch_size", "infill", "spans", "speculative"}
INFILL_DEFAULTS = {"span": 32, "num_examples": 8, "seed": 0, "temperature": 0.0, "batch_size": 8,
                   "plans": ["ar"]}
# natural held-out spans (a3jax/eval/spans.py: identifiers, return expressions, argument lists,
# docstring lines), filled greedily: token accuracy and exact match
SPANS_DEFAULTS = {"per_kind": 16, "seed": 0, "plan": "ar"}
# speculative(k) sampling of those spans: tokens per model call and acceptance of each draft position
SPECULATIVE_DEFAULTS = {"k": 4, "temperature": 1.0, "seed": 0}


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    overrides: dict
    group: str

    def override_items(self) -> list[str]:
        """The overrides as 'KEY=TEXT' strings for configs.apply_overrides."""
        return [f"{key}={value_text(value)}" for key, value in self.overrides.items()]


@dataclasses.dataclass
class Sweep:
    path: pathlib.Path
    points: list[Point]
    eval: dict  # as written in the file (None entries are filled per point from its config)


def value_text(value) -> str:
    """The --config.KEY=TEXT text of a value (configs.apply_override parses it back)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def group_of(name: str) -> str:
    """The point's name without a trailing seed suffix (-s0, _seed1)."""
    return SEED_SUFFIX.sub("", name) or name


def normal_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides as 'KEY=TEXT' (without a leading --config.)."""
    return [o.removeprefix("--").removeprefix("config.") for o in overrides]


def _load_module(path: pathlib.Path):
    from a3jax.configs import ConfigError

    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass e.g. --config experiments/ablation_small.py")
    spec = importlib.util.spec_from_file_location(f"a3jax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str | pathlib.Path) -> Sweep:
    """Reads and checks a sweep file's get_sweep() (and get_eval() when defined)."""
    path = pathlib.Path(path)
    module = _load_module(path)
    for needed in ("get_config", "get_sweep"):
        if not hasattr(module, needed):
            raise UserError(f"sweep file {path} defines no {needed}() function; a sweep file defines "
                             "get_config() (the base config) and get_sweep() (the points)")
    raw = module.get_sweep()
    if not isinstance(raw, (list, tuple)) or not raw:
        raise UserError(f"{path}: get_sweep() must return a non-empty list of points")
    points, seen = [], set()
    for index, item in enumerate(raw):
        where = f"{path}: point {index}"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise UserError(f"{where} must be a dict with a 'name' string and an 'overrides' dict")
        name = item["name"]
        if not POINT_NAME.match(name):
            raise UserError(f"{where}: name {name!r} must be a folder name (letters, digits, _ . + -)")
        if name in seen:
            raise UserError(f"{where}: the name {name!r} is used twice; point names must be unique")
        seen.add(name)
        overrides = item.get("overrides", {})
        if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
            raise UserError(f"{where} ({name}): 'overrides' must be a dict of dotted keys, e.g. "
                             "{'model.variant': 'causal'}")
        unknown = set(item) - {"name", "overrides", "group"}
        if unknown:
            raise UserError(f"{where} ({name}): unknown keys {sorted(unknown)}; a point has name, "
                             "overrides and optionally group")
        overrides = {k.removeprefix("--").removeprefix("config."): v for k, v in overrides.items()}
        points.append(Point(name, overrides, str(item.get("group") or group_of(name))))
    spec = module.get_eval() if hasattr(module, "get_eval") else {}
    return Sweep(path, points, _check_eval(spec, path))


def _check_eval(spec, path) -> dict:
    """get_eval()'s dict checked (unknown keys, plans and orders that do not parse), infill defaults
    filled in; orders and nll_rows stay None when not given (each point's config fills them)."""
    if not isinstance(spec, dict):
        raise UserError(f"{path}: get_eval() must return a dict")
    unknown = set(spec) - EVAL_KEYS
    if unknown:
        raise UserError(f"{path}: get_eval() has unknown keys {sorted(unknown)}; valid: {sorted(EVAL_KEYS)}")
    infill = spec.get("infill", {})
    if infill is None:
        infill = {"plans": []}
    bad = set(infill) - set(INFILL_DEFAULTS)
    if bad:
        raise UserError(f"{path}: get_eval()['infill'] has unknown keys {sorted(bad)}; valid: "
                         f"{sorted(INFILL_DEFAULTS)}")
    infill = {**INFILL_DEFAULTS, **infill}
    infill["plans"] = list(infill["plans"])
    from a3jax.decode.plans import parse_plan
    from a3jax.orders import parse_sampler

    for plan in infill["plans"]:
        parse_plan(plan)  # ValueError names it
    orders = spec.get("orders")
    if orders is not None:
        orders = [str(o).strip() for o in orders]
        for order in orders:
            parse_sampler(order)
    extras = {}
    for key, defaults in (("spans", SPANS_DEFAULTS), ("speculative", SPECULATIVE_DEFAULTS)):
        value = spec.get(key)
        if value is None:
            extras[key] = None
            continue
        bad = set(value) - set(defaults)
        if bad:
            raise UserError(f"{path}: get_eval()[{key!r}] has unknown keys {sorted(bad)}; valid: {sorted(defaults)}")
        extras[key] = {**defaults, **value}
    if extras["speculative"] is not None and extras["spans"] is None:
        raise UserError(f"{path}: get_eval()['speculative'] samples the natural spans: give 'spans' too")
    return {"orders": orders, "nll_rows": spec.get("nll_rows"), "nll_batch_size": spec.get("nll_batch_size", 8),
            "infill": infill, **extras}


def eval_settings(sweep_eval: dict, exp) -> dict:
    """The sweep's eval settings (Sweep.eval) with the point's defaults filled in from its parsed
    config `exp` (an a3jax.configs.Experiment): exp.orders.eval and exp.train.eval_rows."""
    return {
        "orders": list(sweep_eval["orders"] if sweep_eval["orders"] is not None else exp.orders.eval),
        "nll_rows": int(sweep_eval["nll_rows"] or exp.train.eval_rows),
        "nll_batch_size": int(sweep_eval["nll_batch_size"]),
        "infill": dict(sweep_eval["infill"]),
        "spans": sweep_eval.get("spans"),
        "speculative": sweep_eval.get("speculative"),
    }


def select(points: Sequence[Point], only) -> list[Point]:
    """The points named by `only` (comma-separated names, groups or shell patterns; None = all)."""
    if not only:
        return list(points)
    wanted = [w.strip() for w in (only.split(",") if isinstance(only, str) else only) if w.strip()]
    chosen = []
    for pattern in wanted:
        hits = [p for p in points if fnmatch.fnmatchcase(p.name, pattern) or p.group == pattern]
        if not hits:
            raise UserError(f"--only {pattern!r} matches no point; the points are "
                             f"{', '.join(p.name for p in points)}")
        chosen.extend(h for h in hits if h not in chosen)
    return [p for p in points if p in chosen]  # in sweep order


def point_config(sweep: Sweep, point: Point, overrides: Sequence[str] = (), root=None):
    """The point's config, parsed once (a3jax.configs.Experiment; `.raw` is its ConfigDict): the
    file's get_config(), the command line's overrides, then the point's own (the point wins: it
    defines the grid). `{root}` in a point's value is the sweep's root, e.g.
    "train.init_from": "{root}/pretrain-s0" starts a point from another point's weights.
    A bad value raises ValueError naming the point."""
    from a3jax.configs import apply_overrides, load_config_file, parse

    items = point.override_items()
    if root is not None:
        items = [item.replace("{root}", str(pathlib.Path(root).absolute())) for item in items]
    try:
        config = load_config_file(sweep.path)
        apply_overrides(config, normal_overrides(overrides) + items)
        return parse(config)
    except ValueError as error:
        raise UserError(f"point {point.name}: {error}") from None
