"""a3jax sweep and a3jax report: a 2-point micro sweep end to end, resumption by skipping, the
report's tables and plots, runs with missing or partial metrics, --print-commands, curriculum presets."""

import argparse
import importlib.util
import json
import math
import pathlib
import shlex
import shutil
import time

import pytest

from a3jax import study
from a3jax.errors import UserError
from a3jax.orders import Curriculum
from a3jax.study import run as sweep_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICRO = ROOT / "experiments" / "ablation_micro.py"
SMALL = ROOT / "experiments" / "ablation_small.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_args(*argv):
    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """The body rows of the first Markdown table after the heading `section`."""
    lines = markdown.split(f"## {section}\n", 1)[1].splitlines()
    table = [line for line in lines[:next((i for i, l in enumerate(lines) if l.startswith("## ")), len(lines))]
             if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in table[2:]]


def test_micro_sweep_end_to_end_then_report_then_rerun_skips(tmp_path, capsys):
    root = tmp_path / "sweep"
    # --only first: one point, the other stays "new" in sweep.json
    first = study.run_sweep(MICRO, root, only="a3_direct-s0", progress=False)
    assert [(p["name"], p["status"]) for p in first["points"]] == [("causal-s0", "new"), ("a3_direct-s0", "done")]
    data = study.run_sweep(MICRO, root, progress=False)
    assert [(p["name"], p["status"], p["step"]) for p in data["points"]] == [("causal-s0", "done", 6),
                                                                           ("a3_direct-s0", "done", 6)]
    assert json.loads((root / "sweep.json").read_text())["points"][0]["status"] == "done"

    causal = json.loads((root / "causal-s0" / "eval_final.json").read_text())
    a3 = json.loads((root / "a3_direct-s0" / "eval_final.json").read_text())
    assert causal["variant"] == "causal" and a3["variant"] == "a3" and a3["step"] == 6
    assert causal["nll"]["random(2)"] is None and "'ar' order" in causal["unavailable"]["nll/random(2)"]
    assert [e["plan"] for e in causal["infill"]] == ["ar", "blocks(4)"] and causal["infill"][1]["metrics"] is None
    assert [e["steps"] for e in a3["infill"]] == [8, 2]
    for order in ("ar", "random(2)"):
        assert math.isfinite(a3["nll"][order]["nll"]) and a3["nll"][order]["unit"] == "byte"
    assert all(0 <= e["metrics"]["rougeL"] <= 1 for e in a3["infill"])

    out = tmp_path / "report"
    summary = study.build_report([root], out)
    assert summary["problems"] == []
    text = (out / "report.md").read_text()
    rows = table_rows(text, "Runs")
    assert [r[0] for r in rows] == [str(root / "causal-s0"), str(root / "a3_direct-s0")]
    by_run = {r["run"]: r for r in summary["runs"]}
    for name in ("causal-s0", "a3_direct-s0"):
        values = by_run[str(root / name)]
        assert not values["problems"]
        for key in ("train_loss", "nll/ar", "bits/ar", "infill/ar/rougeL"):
            assert math.isfinite(values[key]), (name, key)
    assert math.isfinite(by_run[str(root / "a3_direct-s0")]["nll/random(2)"])
    assert "⚠" not in text
    assert [r[0] for r in table_rows(text, "Averaged over seeds")] == ["causal", "a3_direct"]
    for name in study.PLOTS:
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 2000, name

    # --evaluate: the sweep's eval of another workdir (here a copy of a point's checkpoints, as a
    # conversion would be) on the same held-out rows gives the point's own numbers
    start = tmp_path / "start"
    shutil.copytree(root / "a3_direct-s0" / "checkpoints", start / "checkpoints")
    assert sweep_cli.main(sweep_args("--config", str(MICRO), "--root", str(root), "--evaluate", str(start))) == 0
    again = json.loads((start / "eval_final.json").read_text())
    assert again["step"] == 6 and again["nll"] == a3["nll"] and again["infill"] == a3["infill"]
    with pytest.raises(UserError, match="no checkpoints/ folder"):
        sweep_cli.main(sweep_args("--config", str(MICRO), "--root", str(root), "--evaluate", str(tmp_path)))
    # a conversion evaluated at step 0 (no training files) is a run of the report, with no problems
    again["step"], again["tokens_seen"] = 0, 0
    (start / "eval_final.json").write_text(json.dumps(again))
    summary = study.build_report([start, root], tmp_path / "report0")
    assert summary["problems"] == [] and [r["problems"] for r in summary["runs"]] == [[], [], []]
    assert table_rows((tmp_path / "report0" / "report.md").read_text(), "Runs")[0][0] == str(start)

    # a rerun finds both points done: no training, no evaluation, files untouched
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.glob("*/*.json*")}
    capsys.readouterr()
    started = time.perf_counter()
    assert sweep_cli.main(sweep_args("--config", str(MICRO), "--root", str(root), "--no-progress")) == 0
    assert time.perf_counter() - started < 15
    assert "causal-s0: done (step 6 of 6, eval_final.json present); skipped" in capsys.readouterr().err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.glob("*/*.json*")} == before


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_names_missing_partial_and_non_finite_runs(tmp_path, capsys):
    config = {"seed": 0, "model": {"variant": "a3"}, "orders": {"curriculum": "random(4)"},
              "train": {"steps": 100, "batch_size": 4}, "data": {"seq_len": 32}}
    runs = tmp_path / "runs"
    partial = runs / "partial"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps(config))
    write_jsonl(partial / "metrics.jsonl", [{"step": s, "train/loss": 5.0 - s / 100} for s in range(1, 41)])
    diverged = runs / "diverged"
    diverged.mkdir()
    (diverged / "config.json").write_text(json.dumps(config))
    write_jsonl(diverged / "metrics.jsonl", [{"step": s, "train/loss": 4.0} for s in range(1, 100)]
                + [{"step": 100, "train/loss": "nan"}])
    (diverged / "eval_final.json").write_text(json.dumps({
        "step": 100, "variant": "a3", "group": "diverged", "nll": {"ar": {"nll": "nan", "bits": "nan"}},
        "nll_bound": {}, "infill": [{"plan": "ar", "steps": 8, "metrics": {"exact_match": 0.0, "rougeL": 0.1,
                                                                            "token_acc": 0.2}}],
        "unavailable": {}}))
    bare = runs / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    (runs / "cut").mkdir()
    (runs / "cut" / "config.json").write_text(json.dumps(config))
    (runs / "cut" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\n{"step": 2, "trai')
    missing = tmp_path / "nowhere"

    summary = study.build_report([runs, missing], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    err = capsys.readouterr().err
    expected = [
        f"{partial}: no eval_final.json (training stopped at step 40 of 100)",
        f"{partial}: partial metrics: training stopped at step 40 of 100",
        f"{diverged}: non-finite train/loss at 1 of 100 logged steps (first at step 100)",
        f"{diverged}: non-finite nll/ar/nll = nan in eval_final.json",
        f"{bare}: no config.json", f"{bare}: no metrics.jsonl",
        f"{runs / 'cut'}: 1 unreadable line(s) in metrics.jsonl",
        f"{missing}: does not exist",
    ]
    for message in expected:
        assert message in summary["problems"], message
        assert message in text, message
        assert message in err, message
    rows = {r[0]: r for r in table_rows(text, "Runs")}
    assert "⚠ nan" in rows[f"{diverged} ⚠"][5]  # final train loss cell marked non-finite
    assert f"{partial} ⚠" in rows
    for name in study.PLOTS:
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_MAGIC)


def test_report_of_a_sweep_names_points_not_started(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "sweep.json").write_text(json.dumps({"config": "x.py", "command": "a3jax sweep --config x.py", "points": [
        {"name": "mdlm-s0", "workdir": "mdlm-s0", "status": "invalid", "error": "model.variant='mdlm' is unknown"}]}))
    summary = study.build_report([root], tmp_path / "out")
    assert summary["problems"] == [f"{root / 'mdlm-s0'}: not started (sweep status invalid; "
                                   "model.variant='mdlm' is unknown)"]
    assert "(no run has metrics yet)" in (tmp_path / "out" / "report.md").read_text()


def test_print_commands_lists_one_train_and_eval_line_per_point(tmp_path, capsys):
    from a3jax.cli import build_parser
    from a3jax.configs import load_config

    root = tmp_path / "r"
    assert sweep_cli.main(sweep_args("--config", str(MICRO), "--root", str(root), "--print-commands"),
                          ["--config.train.lr=0.002"]) == 0
    lines = capsys.readouterr().out.splitlines()
    points = study.load_sweep(MICRO).points
    assert len(lines) == len(points) == 2
    assert not root.exists()  # nothing ran
    for line, point in zip(lines, points):
        train_part, eval_part = line.split(" && ")
        assert eval_part.startswith(f"a3jax sweep --config {MICRO} --root {root} --only {point.name}")
        argv = shlex.split(train_part)
        assert argv[:2] == ["a3jax", "train"]
        args = build_parser().parse_args([a for a in argv[1:] if not a.startswith("--config.")])
        assert args.workdir == str(root / point.name) and args.config == str(MICRO)
        config = load_config(args.config, [a for a in argv if a.startswith("--config.")])
        expected = study.point_config(study.load_sweep(MICRO), point, ["train.lr=0.002"])
        assert config.to_dict() == expected.raw.to_dict() and config.train.lr == 0.002


def test_sweep_files_are_checked_before_anything_runs(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text(f"import importlib.util\n"
                   f"spec = importlib.util.spec_from_file_location('m', {str(MICRO)!r})\n"
                   "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                   "get_config = m.get_config\n"
                   "def get_sweep():\n"
                   "    return [{'name': 'ok-s0', 'overrides': {}},\n"
                   "            {'name': 'bad-s0', 'overrides': {'model.d_modle': 8}}]\n")
    with pytest.raises(ValueError, match=r"point bad-s0: unknown config key model.d_modle \(did you mean model.d_mo"):
        study.run_sweep(bad, tmp_path / "root", progress=False)
    assert not (tmp_path / "root").exists()
    with pytest.raises(ValueError, match=r"--only 'nope' matches no point; the points are ok-s0, bad-s0"):
        study.commands(bad, tmp_path / "root", only="nope")
    assert [p.name for p in study.select(study.load_sweep(bad).points, "ok")] == ["ok-s0"]  # a group name


def test_curriculum_presets_parse_and_have_their_stages():
    curricula = load("curricula")
    expected = {
        "paper_5_stage": ["ar", "blocks(2)", "blocks(4)", "random(4)", "random(8)"],
        "direct_any_order": ["random_sizes(1,8)"],
        "ar_only": ["ar"],
        "blocks_only": ["blocks(2)", "blocks(4)"],
        "masked_diffusion_style": ["two_group(0.01,1)"],
        "mixture": [load("tiny").get_config().orders.curriculum],
    }
    assert set(curricula.PRESETS) == set(expected)
    for name, stages in expected.items():
        for total in (3, 1000):
            parsed = Curriculum.parse(curricula.curriculum(name, total))
            assert [s.spec for s in parsed.stages] == stages
            bounds = [s.until_step for s in parsed.stages[:-1]]
            assert bounds == sorted(set(bounds)) and parsed.stages[-1].until_step is None
    assert curricula.curriculum("paper_5_stage", 1000) == (
        "ar until 200; blocks(2) until 400; blocks(4) until 600; random(4) until 800; random(8)")
    with pytest.raises(ValueError, match="unknown curriculum preset 'nope'"):
        curricula.curriculum("nope", 10)


def test_small_study_points_have_equal_tokens_and_valid_configs():
    small = study.load_sweep(SMALL)
    assert [p.name for p in small.points] == [f"{n}-s{s}" for s in (0, 1)
                                              for n in ("causal_ar", "a3_direct", "a3_paper5", "mdlm")]
    tokens = set()
    for point in small.points:
        if point.overrides["model.variant"] == "mdlm":
            continue  # the masked-diffusion variant is checked by its own tests
        config = study.point_config(small, point)
        tokens.add(config.train.steps * config.train.batch_size * config.data.seq_len)
    assert len(tokens) == 1
    assert small.eval["orders"] == ["ar", "random(1)", "random(4)"]
    assert small.eval["infill"]["plans"] == ["ar", "blocks(4)", "blocks(8)"]
    assert [study.decoding_steps(p, 32) for p in small.eval["infill"]["plans"]] == [32, 8, 4]


def test_point_status_on_disk(tmp_path):
    settings = {"orders": ["ar"], "nll_rows": 4, "nll_batch_size": 4, "infill": {"plans": ["ar"]}}
    assert study.disk_status(tmp_path, 6, settings) == {"state": "new", "step": 0}
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()  # a write cut short: not a checkpoint
    assert study.disk_status(tmp_path, 6, settings) == {"state": "partial", "step": 3}
    (tmp_path / "checkpoints" / "6").mkdir()
    assert study.disk_status(tmp_path, 6, settings) == {"state": "trained", "step": 6}
    study.write_json(tmp_path / "eval_final.json", {"step": 6, "settings": settings})
    assert study.disk_status(tmp_path, 6, settings) == {"state": "done", "step": 6}
    assert study.disk_status(tmp_path, 6, {**settings, "nll_rows": 8})["state"] == "trained"  # eval again
    assert study.disk_status(tmp_path, 9, settings)["state"] == "partial"  # train.steps raised: resume


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    failing = tmp_path / "failing_sweep.py"
    failing.write_text(f"import importlib.util\n"
                       f"spec = importlib.util.spec_from_file_location('m', {str(MICRO)!r})\n"
                       "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                       "def get_config():\n"
                       "    config = m.get_config()\n"
                       "    config.data.source = 'text'\n"
                       f"    config.data.paths = ({str(tmp_path / 'absent.txt')!r},)\n"
                       "    return config\n"
                       "def get_sweep():\n"
                       "    return [{'name': 'a-s0', 'overrides': {}}, {'name': 'b-s0', 'overrides': {'seed': 1}}]\n")
    root = tmp_path / "root"
    assert sweep_cli.main(sweep_args("--config", str(failing), "--root", str(root), "--no-progress")) == 1
    points = json.loads((root / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points] == ["failed", "failed"]
    assert "absent.txt" in points[0]["error"]
    err = capsys.readouterr().err
    assert "1/2 a-s0: failed:" in err and "2/2 b-s0: failed:" in err
