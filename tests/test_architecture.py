"""The import graph of a3jax: one-way, level by level (docs/architecture.md, "Modules by level").

Every import between a3jax modules (at module level or inside a function) must go to the same or
a lower level, and no group of modules may import each other in a circle. A failure names the
offending import.
"""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "a3jax"

# Lowest first. A module belongs to the level of the longest prefix that matches its name.
LEVELS = [
    ("foundations", ["a3jax._lazy", "a3jax.errors", "a3jax.schema", "a3jax.xla_flags", "a3jax.host_memory",
                     "a3jax.layout", "a3jax.orders", "a3jax.kernels"]),
    ("model", ["a3jax.model", "a3jax.variants", "a3jax.flops", "a3jax.loss"]),
    ("configs and data", ["a3jax.configs", "a3jax.data", "a3jax.parallel", "a3jax.checkpoint",
                          "a3jax.distributed"]),
    ("training and decoding", ["a3jax.train", "a3jax.decode"]),
    ("evaluation and weights", ["a3jax.eval", "a3jax.inference", "a3jax.convert"]),
    ("entry points", ["a3jax.study", "a3jax.bench", "a3jax.demo", "a3jax.demo_output", "a3jax.cli", "a3jax.train.cli",
                      "a3jax.decode.cli", "a3jax.eval.cli", "a3jax.convert.cli", "a3jax"]),
]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def level_of(name: str) -> int:
    matches = [(len(p), index) for index, (_, prefixes) in enumerate(LEVELS) for p in prefixes
               if name == p or name.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"module {name} has no level in tests/test_architecture.py LEVELS; add it")
    return max(matches)[1]


def imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """The a3jax modules `name` imports (a `from package import submodule` counts as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "a3jax":
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "a3jax")
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_level_and_imports_only_downward():
    upward = []
    for name, targets in graph().items():
        for target in targets:
            if level_of(target) > level_of(name):
                upward.append(f"{name} ({LEVELS[level_of(name)][0]}) imports {target} "
                              f"({LEVELS[level_of(target)][0]})")
    assert not upward, "imports reaching up a level:\n" + "\n".join(sorted(upward))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_checks_have_power():
    """A circle and an upward import planted in a copy of the graph are found."""
    edges = graph()
    edges["a3jax.model.prefix_chunks"] = edges["a3jax.model.prefix_chunks"] | {"a3jax.model.attention"}
    assert ["a3jax.model.attention", "a3jax.model.prefix_chunks"] in cycles(edges)
    assert level_of("a3jax.train.loop") > level_of("a3jax.configs.sections")
    with pytest.raises(AssertionError, match="has no level"):
        level_of("a3jax_other.module")


# Variants are described by what they do (a3jax/variants.py): no module outside the policy tests a
# variant's name. Comparisons of `variant`/`.variant`/`cfg.variant` with a string literal, in either
# order, with == / != / in.
VARIANT_NAME_TEST = re.compile(
    r"""variant\s*(==|!=|\bin\b|\bnot\s+in\b)\s*[(\["']|["'](a3|causal|mdlm)["']\s*(==|!=)\s*[\w.]*variant""")


def variant_name_tests(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if VARIANT_NAME_TEST.search(line)]


def test_no_module_tests_a_variant_by_name():
    found = []
    for name, path in modules().items():
        if name == "a3jax.variants":
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}: {line}" for line in variant_name_tests(path.read_text())]
    assert not found, "ask the variant's facts (cfg.facts) instead of its name:\n" + "\n".join(found)


def test_the_variant_name_check_has_power():
    planted = ['if cfg.variant == "causal":', "if model.cfg.variant != 'a3':", 'causal = variant in ("causal",)',
               'if "mdlm" == cfg.variant:']
    assert variant_name_tests("\n".join(planted)) == planted
    assert variant_name_tests('variant = "a3"\nif cfg.facts.next_token:\nraise ValueError(f"variant={v!r}")') == []


def test_gpu_xla_flags_are_added_only_where_the_user_did_not_set_them(monkeypatch):
    from a3jax import xla_flags

    merged = xla_flags.with_gpu_flags("--xla_gpu_enable_triton_gemm=true --xla_force_host_platform_device_count=8")
    assert "--xla_gpu_enable_triton_gemm=true" in merged and "--xla_gpu_enable_triton_gemm=false" not in merged
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in merged
    assert merged.startswith("--xla_gpu_enable_triton_gemm=true --xla_force_host_platform_device_count=8")
    monkeypatch.setattr(xla_flags, "cuda_installed", lambda: True)
    env = {"XLA_FLAGS": ""}
    assert xla_flags.apply_gpu_flags(env) and len(env["XLA_FLAGS"].split()) == len(xla_flags.HOPPER_FLAGS)
    assert not xla_flags.apply_gpu_flags({"A3JAX_XLA_GPU_FLAGS": "0"})
    monkeypatch.setattr(xla_flags, "cuda_installed", lambda: False)
    assert not xla_flags.apply_gpu_flags({})


def test_every_gpu_xla_flag_is_known_to_this_jaxlib():
    """XLA aborts on an unknown flag: a fresh process with all of them set starts and computes."""
    import os
    import subprocess
    import sys

    from a3jax import xla_flags

    env = {**os.environ, "XLA_FLAGS": xla_flags.with_gpu_flags(""), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "3.0", done.stderr[-500:]


def test_every_heavy_test_named_in_conftest_exists():
    """tests/conftest.py names the heavy tier's tests one by one: a renamed test must not drop out
    of every tier unnoticed."""
    from conftest import HEAVY

    root = pathlib.Path(__file__).resolve().parent.parent
    for node in HEAVY:
        path, name = node.split("::")
        assert f"def {name.split('[')[0]}(" in (root / path).read_text(), f"{node} is not a test any more"
