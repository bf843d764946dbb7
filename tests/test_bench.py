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
    # variant, order, attention, remat, loss chunk, batch, step ms, tokens/s, TFLOP/s, MFU, x causal
    rows = re.findall(r"^(a3|causal)\s+\S+\s+(\w+)\s+\S+\s+\d+\s+(\d+)\s+([\d.]+)\s+([\d,]+)\s+\S+\s+\S+\s+([\d.]+)",
                      out, re.M)
    assert [r[0] for r in rows] == ["a3", "causal"]
    assert [r[1] for r in rows] == ["xla", "xla"]  # auto resolves to xla on the CPU
    assert all(float(ms) > 0 for *_, ms, _, _ in rows)
    assert float(rows[1][5]) == 1.0 and float(rows[0][5]) > 0  # x causal
    assert re.search(r"FLOP ratio A3 / causal \(docs/flops.md\): 1\.\d\dx", out)


def test_bench_train_backends_and_batch_sizes_give_one_row_each(capsys):
    code = cli.main(["bench", "train", f"--config={TINY}", "--repeats=1", "--config.model.d_model=32",
                     "--config.model.n_layers=1", "--config.model.n_heads=2", "--config.model.n_kv_heads=1",
                     "--config.model.ffn_dim=64", "--config.data.seq_len=32", "--config.mesh.devices=1",
                     "--batch-sizes=2,4", "--backends=xla,pallas", "--variants=a3"])
    out = capsys.readouterr().out
    assert code == 0
    rows = re.findall(r"^a3\s+\S+\s+(\w+)\s+\S+\s+\d+\s+(\d+)\s+[\d.]+", out, re.M)
    assert rows == [("xla", "2"), ("pallas", "2"), ("xla", "4"), ("pallas", "4")]
    assert "causal" not in out.split("FLOP ratio")[0].split("\n", 2)[2]


def test_bench_attention_compares_backends_with_two_causal_calls(capsys):
    code = cli.main(["bench", "attention", "--batch=1", "--seq-len=64", "--heads=2", "--kv-heads=1",
                     "--head-dim=16", "--dtype=float32", "--backends=xla,cudnn,pallas", "--repeats=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^2x causal \(xla\)\s+[\d.]+\s+[\d.]+\s+1\.00$", out, re.M)
    assert re.search(r"^xla\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert re.search(r"^pallas\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert "cudnn" in out and "needs a GPU" in out
    pairs = dict((name, int(count.replace(",", ""))) for name, count in
                 re.findall(r"(every pair|skipping dq|skipping dk/dv|two causal calls) ([\d,]+) \(", out))
    assert pairs["every pair"] == 1 * 2 * 1 * 1  # 64 rows: one tile per stream, one key tile
    assert 0 < pairs["skipping dq"] <= pairs["every pair"] and pairs["two causal calls"] == 2


def test_backward_block_pairs_on_the_bench_layout():
    """On the 1B bench layout the skipping backward visits about half the pairs of tokamax's
    backward under key ranges, about what two causal calls visit (BENCHMARKS.md, issue 23)."""
    import jax.numpy as jnp

    from a3jax.bench.attention import backward_block_pairs, sorted_layout

    layout = sorted_layout(2, 1024, "random(4)")
    pairs = backward_block_pairs(jnp.asarray(layout["segment_ids"]), jnp.asarray(layout["groups"]))
    assert pairs["every pair"] == 2 * 2 * 16 * 16
    assert pairs["skipping dq"] == pairs["skipping dk/dv"]  # the same pairs, seen from either side
    assert 0.45 < pairs["skipping dq"] / pairs["every pair"] < 0.6
    assert 0.95 < pairs["skipping dq"] / pairs["two causal calls"] < 1.1


def test_bench_decode_prints_cached_and_recompute_and_the_ratio(capsys):
    code = cli.main(["bench", "decode", f"--config={TINY}", "--row-len=40", "--gap=8", "--plan=blocks(2)",
                     "--batch=2", "--repeats=1", "--config.model.d_model=32", "--config.model.n_layers=2",
                     "--config.model.n_heads=2", "--config.model.n_kv_heads=1", "--config.model.ffn_dim=64"])
    out = capsys.readouterr().out
    assert code == 0
    rows = dict(re.findall(r"^(cached|recompute)\s+[\d.]+\s+[\d,]+\s+([\d.]+)$", out, re.M))
    assert set(rows) == {"cached", "recompute"}
    assert float(rows["recompute"]) > float(rows["cached"]) > 0  # recompute redoes the whole row each step
    assert re.search(r"cached is [\d.]+x faster than recompute \([\d.]+x fewer model FLOPs per token\)", out)


def test_decode_flops_match_a_hand_count():
    from a3jax.bench.decode import decode_flops
    from a3jax.model import ModelConfig

    cfg = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=1, n_kv_heads=1, ffn_dim=8, variant="a3")
    stream = 2 * 4 * 4 * 2 + 3 * 2 * 4 * 8  # q and o projections + the SwiGLU MLP, per row
    kv, attn, logits = 2 * 2 * 4 * 4, 2 * 2 * 4, 2 * 4 * 10  # per content row; per key; per predicted row
    # 3 given tokens (BOS included), then groups of 1 and 2. cached: prefill (3 content + 1 query rows
    # against 3 keys), then (1 content + 2 query rows against 4 keys).
    cached = (4 * stream + 3 * kv + 4 * 3 * attn + logits) + (3 * stream + 1 * kv + 3 * 4 * attn + 2 * logits)
    assert decode_flops(cfg, "cached", 3, [1, 2]) == cached
    # recompute, 1 layer: the query stream only (last content layer skipped) over all 6 rows; known
    # rows see nothing in the query stream, unknown ones see the known: 3 * 3 then 4 * 2 keys.
    recompute = (6 * stream + 6 * kv + (3 * 3) * attn + logits) + (6 * stream + 6 * kv + (2 * 4) * attn + 2 * logits)
    assert decode_flops(cfg, "recompute", 3, [1, 2]) == recompute


def test_bench_host_times_each_host_setting_in_its_own_process(capsys):
    code = cli.main(["bench", "host", f"--config={TINY}", "--rounds=1", "--repeats=2", "--config.model.d_model=32",
                     "--config.model.n_layers=1", "--config.model.n_heads=2", "--config.model.n_kv_heads=1",
                     "--config.model.ffn_dim=64", "--config.data.seq_len=32", "--config.train.batch_size=4"])
    out = capsys.readouterr()
    assert code == 0
    rows = re.findall(r"^(neither|malloc|\d+ devices|both \(\d+ devices \+ malloc\))\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                      r"\s+([\d.]+)$", out.out, re.M)
    assert [r[0].split()[0] for r in rows] == ["neither", "malloc", rows[2][0].split()[0], "both"]
    assert rows[0][2] == "1.00" and rows[0][4] == "1.00" and all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows)
    # the children really ran under their settings: one device, then one per core
    assert re.search(r"neither: .*\(1 device\)", out.err)
    cores = int(rows[2][0].split()[0])
    assert re.search(rf"both .*\({cores} devices?\)", out.err)


def test_bench_decode_speculative_counts_passes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "decode.json"
    code = cli.main(["bench", "decode", f"--config={TINY}", "--row-len=24", "--gap=8", "--batch=2", "--repeats=1",
                     "--speculative=2", "--config.model.n_layers=1", "--config.model.query_input=shift",
                     f"--json={out}"])
    text = capsys.readouterr().out
    assert code == 0 and "passes/token" in text
    import json

    rows = {r["plan"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["ar"]["passes_per_token"] == rows["ar"]["calls_per_token"] == 1.0  # one pass per token
    assert rows["ar"]["tokens"] == 16 and {"ms", "calls", "passes", "acceptance"} <= set(rows["ar"])
    chained = rows["speculative(2, draft=model, chain)"]  # proposals chained: 2 passes a round
    assert chained["passes_per_token"] > chained["calls_per_token"]
    one_pass = rows["speculative(2, draft=model)"]  # one pass a round, at least one token decided
    assert one_pass["passes_per_token"] == one_pass["calls_per_token"] <= 1.0
