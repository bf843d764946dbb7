"""Ablation studies: a sweep of config points trained one workdir each, the same post-training
evaluation of every point, and a report of the runs' metrics.

  spec.py      the sweep file: points, eval settings, each point's parsed config
  disk.py      what a sweep leaves on disk: file names, atomic JSON, a point's status
  evaluate.py  evaluate one finished point (eval_final.json): NLL or its bound, infilling
  run.py       the sweep runner and `a3jax sweep`
  runs.py      runs read back from disk for a report: their problems and numbers
  plots.py     the report's PNG plots
  report.py    runs -> Markdown tables (per run, averaged over seeds) and `a3jax report`

Imports go one way: spec, disk <- evaluate <- run; spec, disk <- runs <- plots <- report.
"""

from a3jax.study.disk import EVAL_FILE, SWEEP_FILE, disk_status, latest_checkpoint, read_json, write_json
from a3jax.study.evaluate import decoding_steps, evaluate_point
from a3jax.study.plots import PLOTS
from a3jax.study.report import build_report
from a3jax.study.run import commands, run_sweep, sweep_command, write_sweep_file
from a3jax.study.runs import Run, collect, run_values
from a3jax.study.spec import Point, Sweep, eval_settings, group_of, load_sweep, point_config, select, value_text

__all__ = ["EVAL_FILE", "PLOTS", "SWEEP_FILE", "Point", "Run", "Sweep", "build_report", "collect", "commands",
           "decoding_steps", "disk_status", "eval_settings", "evaluate_point", "group_of", "latest_checkpoint",
           "load_sweep", "point_config", "read_json", "run_sweep", "run_values", "select", "sweep_command",
           "value_text", "write_json", "write_sweep_file"]
