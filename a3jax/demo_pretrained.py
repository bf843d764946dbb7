"""`a3jax demo --model smollm2`: a real pretrained LLaMA end to end, offline after one download.

  1/4 fetch     the model's GGUF (a3jax/convert/pretrained.py; cached after the first time)
  2/4 convert   to an a3jax workdir with the shifted query stream (WORKDIR/converted; kept)
  3/4 parity    when torch and transformers are installed: transformers loads the same GGUF with its
                own dequantiser; both tokenise a held-out snippet alike and score it alike under `ar`
  4/4 the ending held-out code spans filled greedily, token accuracy over 64 of them, and answers
                to two prompts, from the adapted checkpoint when WORKDIR/adapted holds one (an
                `a3jax train` run from the converted workdir), else from the converted model under
                `ar` (unadapted: the query stream is then the pretrained model's next-token path)

Every stage prints the time since the start; nothing is trained here (adaptation takes about an
hour a run on 2 cores: docs/ablation/smollm2).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from a3jax.demo_output import Clock, minutes, snippet_line

PROMPTS = (  # (what it shows, prompt with its gap)
    ("chat", "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n"
             "<|im_start|>assistant\n[gap:24]"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n[gap:40]"),
)
SPANS_PER_KIND = 16
SHOWN_SPANS = 4


def _parity(gguf_path: pathlib.Path, loaded, text: str, say) -> None:
    """transformers' LlamaForCausalLM from the same GGUF against the converted model under `ar`."""
    try:
        import accelerate  # noqa: F401  (transformers reads GGUF files with it)
        import torch
        import transformers
    except ImportError:
        say("3/4 parity with transformers skipped: torch, transformers and accelerate are not all installed "
            "(pip install -e '.[torch]')")
        return
    import jax
    import jax.numpy as jnp

    from a3jax.eval.score import score_documents

    say("3/4 parity: transformers loads the same GGUF with its own dequantiser")
    model = transformers.LlamaForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                          dtype=torch.float32).eval()
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = loaded.tokenizer
    ids = np.asarray(tokenizer.encode(text), np.int32)[:200]
    same_ids = list(ids) == reference_tokenizer(text, add_special_tokens=False)["input_ids"][:200]
    tokens = np.concatenate([[tokenizer.bos_id], ids])
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens[None], dtype=torch.long)).logits[0, :-1].float().numpy()
    reference = -float(np.mean(np.take_along_axis(np.asarray(jax.nn.log_softmax(jnp.asarray(logits))),
                                                  tokens[1:, None], 1)))
    ours = score_documents(loaded.model_def, loaded.params, [ids], [np.arange(1, ids.size + 1)],
                           seq_len=ids.size + 1, bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id)
    nll = -float(ours.log_prob[0]) / ids.size
    say(f"3/4 parity on {ids.size} held-out tokens: token ids {'the same' if same_ids else 'DIFFERENT'}; "
        f"NLL {nll:.6f} (a3jax, order ar) vs {reference:.6f} nats/token (transformers): relative difference "
        f"{abs(nll - reference) / reference:.1e}")


def _fills(loaded, spans, say) -> None:
    from a3jax.eval import tasks

    parts = tasks.model_parts(loaded)
    measured = tasks.infill_spans(parts, spans, plan="ar")
    tokenizer = parts.tokenizer
    print("\n==== held-out code, one masked span each, filled greedily (order ar) ====")
    shown = list({s.kind: i for i, s in reversed(list(enumerate(spans)))}.values())[::-1][:SHOWN_SPANS]
    for i in shown:
        span = spans[i]
        print(f"\n-- {span.kind}: {snippet_line(tokenizer, span.window, span.start, span.stop)}")
        print(f"   {'original':<10} {tokenizer.decode(span.window[span.start:span.stop])!r}")
        print(f"   {'filled':<10} {measured['fills'][i]!r}")
    print(f"\n==== greedy infilling of {measured['spans']} held-out spans ({measured['tokens']} tokens), order ar ====")
    for kind, row in measured["by_kind"].items():
        print(f"   {kind:<11} token accuracy {row['token_acc']:6.1%}   exact match {row['exact_match']:6.1%}")
    print(f"   {'all':<11} token accuracy {measured['token_acc']:6.1%}   exact match {measured['exact_match']:6.1%}")


def _answers(loaded, say) -> None:
    from a3jax.decode import SampleConfig, generate
    from a3jax.decode.plans import parse_prompt

    tokenizer = loaded.tokenizer
    print("\n==== answers to two prompts (greedy, order ar; an EOS ends the answer) ====")
    for what, text in PROMPTS:
        prompt = parse_prompt(text, tokenizer, 512)
        result = generate(loaded.model_def, loaded.params, [prompt.tokens], [prompt.known], bos_id=tokenizer.bos_id,
                          pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                          sampling=SampleConfig(plan="ar", temperature=0.0), max_len=512)
        tokens = result.tokens[0]
        answer = tokenizer.decode(tokens[int(np.flatnonzero(~prompt.known)[0]):])
        print(f"\n-- {what}: {text.split('[gap:')[0]!r}\n{answer}")


def main(args, model_name: str) -> int:
    from a3jax.convert.gguf_import import convert_gguf
    from a3jax.convert.pretrained import fetch, model_named
    from a3jax.data import load_corpus
    from a3jax.eval.spans import find_spans
    from a3jax.inference import load_model

    clock = Clock()
    say = clock.say
    model = model_named(model_name)
    workdir = pathlib.Path(args.workdir)
    say(f"1/4 {model.about}")
    gguf_path = fetch(model, log=lambda message: say(f"1/4 {message}"))
    converted = workdir / "converted"
    if (converted / "experiment.py").is_file():
        say(f"2/4 converted already: {converted}")
    else:
        say(f"2/4 converting {gguf_path.name} (the gguf package dequantises it) -> {converted}")
        convert_gguf(gguf_path, converted, log=lambda message: say(f"2/4 {message}"))
    loaded = load_model(converted)
    corpus = load_corpus(loaded.experiment.data, loaded.tokenizer)
    held_out = [loaded.tokenizer.decode(d) for d in corpus.eval_docs]
    snippet = next((t for t in held_out if len(t) > 2000), held_out[0])[:2000]
    _parity(gguf_path, loaded, snippet, say)
    adapted = workdir / "adapted"
    if any((adapted / "checkpoints").glob("[0-9]*")):
        loaded = load_model(adapted)
        say(f"4/4 the adapted model: {adapted} step {loaded.step} (trained to any order from the converted one)")
    else:
        say(f"4/4 the converted model, NOT adapted (no checkpoint in {adapted}): under `ar` it is the pretrained "
            f"{model.name} itself; adapt it (about an hour on 2 cores) with\n  a3jax train --workdir {adapted} "
            f"--config {converted / 'experiment.py'} --config.train.init_from={converted}")
    code_docs = [d for d, n in zip(corpus.eval_docs, corpus.eval_names) if n.startswith("code:")] or corpus.eval_docs
    spans = find_spans(code_docs, loaded.tokenizer, 128, SPANS_PER_KIND, seed=args.seed)
    if spans:
        _fills(loaded, spans, say)
    _answers(loaded, say)
    print()
    say(f"demo done in {minutes(clock.elapsed())}; workdir {workdir}")
    sys.stdout.flush()
    return 0
