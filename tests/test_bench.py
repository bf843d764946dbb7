"""The benchmark commands print their tables (small shapes on CPU); numbers are checked for sense."""

import re

from a3jax import cli

from conftest import TINY


def test_bench_train_prints_both_variants_and_the_ratio(capsys):
    code = cli.main(["bench", "train", f"--config={TINY}", "--repeats=1", "--config.model.d_model=32",
                     "--config.model.n_layers=1", "--config.model.n_heads=2", "--config.model.n_kv_heads=1",
                     "--config.model.ffn_dim=64", "--config.data.seq_len=32", "--config.mesh.devices=1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = re.findall(r"^(a3|causal)\s+\S+\s+([\d.]+)\s+([\d,]+)", out, re.M)
    assert [r[0] for r in rows] == ["a3", "causal"]
    assert all(float(ms) > 0 for _, ms, _ in rows)
    assert re.search(r"A3 / causal step time: [\d.]+x \(FLOP ratio 1\.\d\dx\)", out)


def test_bench_attention_compares_backends_with_two_causal_calls(capsys):
    code = cli.main(["bench", "attention", "--batch=1", "--seq-len=64", "--heads=2", "--kv-heads=1",
                     "--head-dim=16", "--dtype=float32", "--backends=xla,cudnn,pallas", "--repeats=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^2x causal \(xla\)\s+[\d.]+\s+[\d.]+\s+1\.00$", out, re.M)
    assert re.search(r"^xla\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert re.search(r"^pallas\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert "cudnn" in out and "needs a GPU" in out
