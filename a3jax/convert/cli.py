"""Arguments and entry points of `a3jax convert` (HF -> a3jax) and `a3jax export` (a3jax -> HF).

    a3jax convert --from-hf Llama-3.2-1B --out runs/a3-1b --variant a3 \
        --config adapt_llama3_1b [--config.model.dtype=bfloat16 ...]
    a3jax convert --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2 --config adapt_smollm2
    a3jax train --workdir runs/a3-1b --config runs/a3-1b/experiment.py --config.data.paths=...
    a3jax export --workdir runs/a3-1b --out runs/a3-1b-hf [--step N] [--dtype bfloat16]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from a3jax.errors import UserError
from a3jax.variants import VARIANTS, variant_of


def add_convert_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR",
                        help="HF LLaMA folder: config.json + model.safetensors or sharded "
                             "model-*.safetensors with model.safetensors.index.json")
    source.add_argument("--from-gguf", metavar="FILE",
                        help="a LLaMA GGUF file (llama.cpp's format), dequantised to float32 by the gguf "
                             "package; its tokenizer converted by transformers (pip install -e '.[gguf]')")
    parser.add_argument("--out", required=True, metavar="CKPT",
                        help="new a3jax workdir (checkpoint at step 0, experiment.py, tokenizer files)")
    parser.add_argument("--variant", choices=[v for v in VARIANTS if variant_of(v).exportable], default="a3",
                        help="a3: add the query vector (two-stream model); causal: plain LLaMA")
    parser.add_argument("--config", default=None,
                        help="base experiment config for everything but the architecture "
                             "(a preset name or file; default: adapt_smollm2 for --from-gguf, a converted "
                             "pretrained model on a CPU; adapt_tiny for --from-hf); --config.KEY=VALUE "
                             "overrides apply")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query vector's initialisation")


def convert_main(args, overrides: Sequence[str] = ()) -> int:
    from a3jax.configs import apply_overrides, load_config_file
    from a3jax.convert.hf_import import DEFAULT_CONFIG, convert_hf

    if args.from_gguf:
        from a3jax.convert.gguf_import import DEFAULT_CONFIG as GGUF_DEFAULT
        from a3jax.convert.gguf_import import convert_gguf

        config = apply_overrides(load_config_file(args.config or GGUF_DEFAULT), overrides)
        convert_gguf(args.from_gguf, args.out, variant=args.variant, config=config, seed=args.seed)
    else:
        config = apply_overrides(load_config_file(args.config or DEFAULT_CONFIG), overrides)
        convert_hf(args.from_hf, args.out, variant=args.variant, config=config, seed=args.seed)
    return 0


def add_export_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="a3jax workdir holding checkpoints/")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, metavar="HFDIR", help="new folder for the HF files")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the written tensors (the checkpoint holds float32)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB")


def export_main(args, overrides: Sequence[str] = ()) -> int:
    from a3jax.convert.hf_export import export_hf

    if overrides:
        raise UserError(f"a3jax export takes no --config overrides (got {list(overrides)})")
    export_hf(args.workdir, args.out, step=args.step, dtype=args.dtype, max_shard_size=args.max_shard_size)
    return 0


def add_fetch_arguments(parser) -> None:
    from a3jax.convert.pretrained import MODELS

    parser.add_argument("model", choices=sorted(MODELS), help="which pretrained model")
    parser.add_argument("--print-path", action="store_true", help="print only the cached file's path")


def fetch_main(args) -> int:
    from a3jax.convert.pretrained import fetch, model_named

    path = fetch(model_named(args.model), log=lambda m: print(f"[a3jax] {m}", file=sys.stderr, flush=True))
    print(path if args.print_path else f"[a3jax] {args.model}: {path}")
    return 0
