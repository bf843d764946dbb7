"""`a3jax lm-eval`: the real lm-evaluation-harness, offline, on local YAML tasks written here (a
multiple-choice task, a loglikelihood_rolling task, a generate_until task) against a tiny trained
model; its numbers equal `a3jax eval` on the same data, its generations the adapter's own."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from a3jax import cli
from a3jax.eval.lm_eval_adapter import A3JaxLM
from a3jax.eval.tasks import encode_pair
from a3jax.train.loop import train

from conftest import micro_config

MC = [  # the micro model's corpus (conftest.small_corpus) is functions of `value_j = compute(i, j)` lines
    {"context": "def function_12(x):\n    value_0 = compute(12, 0)\n    value_1 = ",
     "choices": ["compute(12, 1)", "}}}}]]]]((((", "@@@@@@@@@@@@"], "label": 0},
    {"context": "def function_3(x):\n    value_0", "choices": [" = compute(3, 0)", "#$%^&*!~`|<>", "QQQQQQQQQQQQ"],
     "label": 0},
    {"context": "def function_5(x):\n", "choices": ["    value_0", "ZZZZZZZZZZZ", "???????????"], "label": 0},
    {"context": "    return x + ", "choices": ["12\n", "@!", "}{"], "label": 0},
]
TEXTS = ["def f(x):\n    return x + 1\n", "def function_5(x):\n    value_0 = compute(5, 0)\n",
         "import sys\nprint(sys.argv)\n" * 3]
GEN = [{"prompt": "def function_7(x):\n    value_0 = compute(7, 0)\n    value_1", "answer": " = compute(7, 1)"},
       {"prompt": "def function_3(x):\n", "answer": "    value_0 = compute(3, 0)"}]

YAML = {
    "a3_mc": """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
target_delimiter: ""
metric_list:
  - metric: acc
""",
    "a3_rolling": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "a3_gen": """output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    workdir = tmp_path_factory.mktemp("lm_eval") / "model"
    train(micro_config("train.steps=80", "train.eval_every=80", "train.checkpoint_every=80"), workdir,
          corpus=small_corpus, progress=False)
    return workdir


def _write(tmp_path):
    files = {"a3_mc": MC, "a3_rolling": [{"text": t} for t in TEXTS], "a3_gen": GEN}
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, records in files.items():
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n" + YAML[name])
    return tasks


def test_the_harness_command_matches_a3jax_eval(trained, tmp_path, capsys):
    tasks = _write(tmp_path)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"))
    out = tmp_path / "harness"
    result = subprocess.run(
        [sys.executable, "-m", "a3jax.cli", "lm-eval", "--tasks", "a3_mc,a3_rolling,a3_gen", "--include_path",
         str(tasks), "--model_args", f"workdir={trained}", "--batch_size", "4", "--output_path", str(out),
         "--log_samples"],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    harness = json.loads(results_file.read_text())["results"]

    def ours(task, data):
        assert cli.main(["eval", "--workdir", str(trained), "--task", task, "--data", str(data), "--no-progress",
                         "--out", str(tmp_path / f"{task}.json")]) == 0
        return json.loads((tmp_path / f"{task}.json").read_text())["metrics"]

    mc = ours("mc", tmp_path / "a3_mc.jsonl")
    assert harness["a3_mc"]["acc,none"] == mc["acc"]
    assert 0 < mc["acc"]  # the tiny model gets some right, so the comparison is not 0 == 0
    rolling = ours("rolling", tmp_path / "a3_rolling.jsonl")
    for metric in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert harness["a3_rolling"][f"{metric},none"] == pytest.approx(rolling[metric], rel=1e-9)
    # generations: what the adapter itself produces for the same requests
    (samples,) = out.rglob("samples_a3_gen_*.jsonl")
    generated = [json.loads(line)["resps"][0][0] for line in samples.read_text().splitlines()]
    adapter = A3JaxLM(workdir=str(trained))
    requests = [type("Request", (), {"args": (g["prompt"], {"until": ["\n"], "max_gen_toks": 12})})() for g in GEN]
    assert generated == adapter.generate_until(requests)
    assert harness["a3_gen"]["exact_match,none"] == np.mean([g == a["answer"] for g, a in zip(generated, GEN)])


def test_long_inputs_follow_the_harness_convention(trained):
    """A context longer than the model's rows is left-truncated (the harness's rule for models with
    a maximum length); a continuation that alone does not fit is refused, naming the fix."""
    adapter = A3JaxLM(workdir=str(trained))
    limit = adapter.max_length  # seq_len, BOS included
    tokenizer = adapter.tokenizer
    context = "x = 1\n" * 40  # far longer than the row
    continuation = "y = 2\n"
    ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)  # the harness's split
    kept = ctx_ids[-(limit - 1 - cont_ids.size):]  # the last tokens that fit with BOS and the continuation
    assert ctx_ids.size > kept.size
    request = type("Request", (), {"args": (context, continuation)})()
    (full,) = adapter.loglikelihood([request])
    (cut,) = adapter._loglikelihood_tokens([(kept, cont_ids)])
    assert full[0] == pytest.approx(cut[0], abs=1e-5)
    too_long = type("Request", (), {"args": ("a", "z" * limit)})()
    with pytest.raises(ValueError, match="seq_len"):
        adapter.loglikelihood([too_long])


def test_missing_harness_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    assert cli.main(["lm-eval", "--tasks", "x"]) == 2
    assert "pip install 'a3jax[eval]'" in capsys.readouterr().err


def test_the_installed_package_declares_the_harness_plugin_entry_point():
    """A harness with plugin discovery reads the `lm_eval.models` entry point group: the installed
    a3jax declares `a3jax` there, it loads the adapter class, and the harness's own registry takes
    it as a placeholder (what discovery registers) and resolves it to that class."""
    from importlib.metadata import entry_points

    from lm_eval.api.registry import Registry

    found = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "a3jax"]
    assert len(found) == 1, "reinstall a3jax (pip install -e .): its entry points are read at install time"
    assert found[0].load() is A3JaxLM
    registry = Registry("model")
    registry.register("a3jax", target=found[0].value)  # discovery's lazy placeholder "module:Class"
    assert registry.get("a3jax") is A3JaxLM


@pytest.fixture(scope="module")
def trained_causal(tmp_path_factory):
    """A micro causal model on a byte-level BPE of its own corpus (the harness's hf model needs a
    tokenizer transformers can load)."""
    from a3jax.data import corpus_from_texts, load_tokenizer
    from a3jax.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("lm_eval_causal")
    texts = [f"def function_{i}(x):\n" + "".join(f"    value_{j} = compute({i}, {j})\n" for j in range(i % 7 + 2))
             + f"    return x + {i}\n" for i in range(40)] + [m["context"] + m["choices"][0] for m in MC] + TEXTS
    train_bpe(texts, 320, root / "tokenizer.json")
    tokenizer = load_tokenizer(str(root / "tokenizer.json"))
    corpus = corpus_from_texts(texts, tokenizer, eval_fraction=0.1)
    config = micro_config("model.variant=causal", "orders.curriculum=ar", "orders.eval=['ar']", "train.steps=40",
                          "train.eval_every=40", "train.checkpoint_every=40", "model.vocab_size=320",
                          f"data.tokenizer={root / 'tokenizer.json'}")
    train(config, root / "model", corpus=corpus, progress=False)
    return root / "model"


def test_bench_scorers_puts_a3jax_eval_beside_the_harness_hf_model(trained_causal, tmp_path, capsys):
    """The same weights scored twice: by a3jax eval and by the harness's own `--model hf` (the
    checkpoint exported, transformers' LlamaForCausalLM), from the same local items, BOS first."""
    piqa = tmp_path / "mc.jsonl"
    piqa.write_text("".join(json.dumps(m) + "\n" for m in MC))
    lambada = tmp_path / "lambada.txt"
    # passages short enough that neither scorer truncates (the harness would cut BOS off the left)
    lambada.write_text("".join(t.replace("\n", " ") + "\n" for t in TEXTS[:2] + [m["context"] + m["choices"][0]
                                                                                  for m in MC]))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    code = cli.main(["bench", "scorers", "--workdir", str(trained_causal), "--piqa", str(piqa), "--lambada",
                     str(lambada), "--text", str(texts), "--batch-size", "4", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-3000:]
    table = re.findall(r"^\| ([A-Za-z/ _-]+) \| ([-\d.]+) \| ([-\d.]+) \| ([-+\d.]+) \|$", out, re.M)
    rows = {name: values for name, *values in table}
    assert set(rows) == {"PIQA acc", "PIQA acc_norm", "LAMBADA acc", "LAMBADA perplexity", "held-out bits/byte"}
    for name, (ours, theirs, _) in rows.items():
        assert float(ours) == pytest.approx(float(theirs), rel=1e-4, abs=1e-3), name
    assert float(rows["LAMBADA perplexity"][0]) > 1.0  # real numbers, not 0 == 0
    assert (tmp_path / "out" / "hf" / "config.json").is_file() and (tmp_path / "out" / "a3jax.json").is_file()
