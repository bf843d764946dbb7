"""Bad input of every command, against a workdir that already holds checkpoints (steps 10 and 12).

Covered: each case runs `a3jax ...` in this process (its fake CPU devices) and must exit 2 with
exactly one error line `a3jax <command>: error: ...` that names the problem (the asserted text);
no traceback. After all of them, every file of the workdir (checkpoints, metrics.jsonl,
config.json, TensorBoard events) is byte-identical, and no output folder was created.
"""

from __future__ import annotations

import pytest

from a3jax import cli

from .conftest import STEPS, TINY, copy_workdir, tree_digest


def train(workdir, harness, *extra, args=()):
    return ["train", f"--config={TINY}", f"--workdir={workdir}", "--no-progress", *args] + [
        f"--config.{o}" for o in harness.overrides(*extra)]


def cases(workdir, harness, tmp):
    """(name, argv, texts the error line must contain)."""
    import jax

    n = jax.device_count()  # 8 fake CPU devices under tests/conftest.py
    hf = tmp / "hf-empty"
    hf.mkdir()
    return [
        ("unknown config key", train(workdir, harness, "train.stepz=3"),
         ["unknown config key train.stepz", "did you mean train.steps?"]),
        ("config value of the wrong type", train(workdir, harness, "train.steps=abc"),
         ["train.steps='abc' has the wrong type"]),
        ("heads not dividing the model width", train(workdir, harness, "model.n_heads=3"),
         ["model.n_heads=3 does not divide model.d_model=32"]),
        ("unknown order sampler", train(workdir, harness, "orders.curriculum=randm(4)"),
         ["unknown sampler 'randm(4)'"]),
        ("mesh not dividing the devices", train(workdir, harness, f"mesh.fsdp={n + 1}"),
         [f"does not divide the {n} devices"]),
        ("mesh larger than the devices", train(workdir, harness, f"mesh.data={2 * n}"),
         [f"has {2 * n} devices but JAX sees {n}"]),
    ] + ([] if n == 1 else [
        ("global batch not divisible by the data axes", train(workdir, harness, f"train.batch_size={2 * n + 1}"),
         [f"train.batch_size={2 * n + 1} is not divisible by the batch axes data x fsdp = {n}"]),
    ]) + [
        ("checkpoint of another model", train(workdir, harness, "model.n_layers=2"),
         ["model.n_layers: checkpoint has 1, config asks 2", "new --workdir"]),
        ("--resume=never with checkpoints", train(workdir, harness, args=("--resume=never",)),
         ["--resume=never", f"up to step {STEPS}", str(workdir / "checkpoints")]),
        ("missing data path", train(workdir, harness, f"data.paths={tmp / 'no-such-shards'}", "mesh.devices=1"),
         [str(tmp / "no-such-shards"), "does not exist"]),
        ("vocab too small for the tokenizer", train(workdir, harness, "model.vocab_size=200"),
         ["model vocab_size=200 is smaller than", "vocab_size=259"]),
        ("sample: prompt longer than the model's length",
         ["sample", f"--workdir={workdir}", "--prompt=" + "x" * 40 + "[gap:4]"], ["max length is 32"]),
        ("sample: unknown plan", ["sample", f"--workdir={workdir}", "--prompt=ab[gap:4]", "--plan=sharpness(2)"],
         ["unknown plan"]),
        ("sample: top-p outside (0, 1]", ["sample", f"--workdir={workdir}", "--prompt=ab[gap:4]", "--top-p=1.5"],
         ["top_p=1.5"]),
        ("sample: a step without checkpoint", ["sample", f"--workdir={workdir}", "--prompt=ab[gap:4]", "--step=7"],
         ["--step 7", "[10, 12]"]),
        ("sample: the folder above a training workdir (a demo workdir)",
         ["sample", f"--workdir={workdir.parent}", "--prompt=ab[gap:4]"],
         ["has no checkpoints/ folder", f"holds the training workdirs {workdir.name}/", f"--workdir {workdir}"]),
        ("eval: unknown task", ["eval", f"--workdir={workdir}", "--task=nope"],
         ["--task 'nope' is unknown"]),
        ("export: a step without checkpoint",
         ["export", f"--workdir={workdir}", "--step=99", f"--out={tmp / 'hf-out'}"], ["--step 99", "[10, 12]"]),
        ("convert into a workdir that holds checkpoints", ["convert", f"--from-hf={hf}", f"--out={workdir}"],
         [str(workdir), "not empty"]),
    ]


def test_bad_input_is_one_line_naming_the_problem_and_the_workdir_is_untouched(
        harness, reference, tmp_path, capsys, monkeypatch, report):
    monkeypatch.delenv("A3JAX_DEBUG", raising=False)
    workdir = copy_workdir(reference.workdir, tmp_path / "run", keep={10, 12})
    before = tree_digest(workdir)
    failures = []
    all_cases = cases(workdir, harness, tmp_path)
    for name, argv, texts in all_cases:
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if not line.startswith("[a3jax]")]
        problem = None
        if code != 2:
            problem = f"exit {code}"
        elif len(errors) != 1 or not errors[0].startswith(f"a3jax {argv[0]}: error: "):
            problem = "not one error line"
        elif missing := [t for t in texts if t not in errors[0]]:
            problem = f"does not name {missing}"
        if problem:
            failures.append(f"{name}: {problem}:\n    " + "\n    ".join(lines))
    assert not failures, "\n".join(failures)
    assert tree_digest(workdir) == before
    assert not (tmp_path / "hf-out").exists()
    report(f"bad input: {len(all_cases)} cases, each exit 2 with one line naming the problem; workdir "
           "byte-identical after all of them")


def test_resume_must_without_a_checkpoint_writes_nothing(harness, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("A3JAX_DEBUG", raising=False)
    workdir = tmp_path / "empty"
    code = cli.main(train(workdir, harness, args=("--resume=must",)))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("a3jax train: error: --resume=must") and "no checkpoint" in err, err
    assert len(err.splitlines()) == 1, err
    assert not workdir.exists(), sorted(str(p.relative_to(tmp_path)) for p in workdir.rglob("*"))


@pytest.mark.parametrize("env, text", [
    ({"A3JAX_COORDINATOR": "127.0.0.1:1"}, "A3JAX_COORDINATOR=127.0.0.1:1 is set but"),
])
def test_a_half_configured_multi_process_job_is_refused_before_anything_is_written(
        harness, reference, tmp_path, capsys, monkeypatch, env, text):
    monkeypatch.delenv("A3JAX_DEBUG", raising=False)
    for key in ("A3JAX_NUM_PROCESSES", "A3JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    workdir = copy_workdir(reference.workdir, tmp_path / "run")
    before = tree_digest(workdir)
    code = cli.main(train(workdir, harness))
    err = capsys.readouterr().err.strip()
    assert code == 2 and text in err and len(err.splitlines()) == 1, err
    assert tree_digest(workdir) == before
