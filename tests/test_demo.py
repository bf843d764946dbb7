"""`a3jax demo` end to end at a micro size: both stages (causal pretraining, then adaptation from
its weights), and every section of the ending a person reads."""

import re

from a3jax import cli


def test_demo_runs_both_stages_and_prints_its_ending(tmp_path, capsys):
    workdir = tmp_path / "demo"
    # 100 files: with 60, Python 3.13's stdlib holds out a single 98-byte file with no span to fill
    args = ["demo", f"--workdir={workdir}", "--no-progress", "--config.train.steps=3", "--config.data.max_files=100",
            "--config.model.n_layers=1", "--config.data.seq_len=96", "--config.train.eval_rows=4"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert (workdir / "pretrain" / "checkpoints" / "3").is_dir() and (workdir / "a3" / "checkpoints" / "3").is_dir()
    for heading in ("1/3 pretraining a causal LLaMA", "2/3 adapting to any order", "==== held-out code",
                    "==== exact log-likelihood", "==== greedy infilling of", "==== held-out bits per byte"):
        assert heading in out, heading
    for kind in ("identifier", "return", "arguments", "docstring"):
        assert re.search(rf"^-- {kind}: ", out, re.M), kind
    for plan in ("ar", "blocks(4)", "confidence(2)"):
        assert re.search(rf"^   {re.escape(plan)}\s+'", out, re.M), plan
    assert re.search(r"order ar\s+log P =\s+-[\d.]+ nats = [\d.]+ bits/byte", out)
    assert re.search(r"all\s+token accuracy\s+[\d.]+%\s+exact match\s+[\d.]+%", out)
    # the suggested next command samples a held-out snippet the demo wrote, with its gap
    prompt = workdir / "prompt.txt"
    assert re.search(r"\[gap:\d+\]", prompt.read_text()) and f"--prompt-file {prompt}" in out
    assert (workdir / "tokenizer.json").is_file() and "0/3 trained a byte-level BPE tokenizer" in out
    # a second run resumes: nothing retrains, the ending is printed again
    assert cli.main(args) == 0
    assert "==== greedy infilling of" in capsys.readouterr().out
