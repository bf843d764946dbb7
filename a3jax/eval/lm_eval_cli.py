"""`a3jax lm-eval ARGS...`: lm-evaluation-harness's own command line, with the a3jax model
registered and used by default:

    a3jax lm-eval --tasks piqa,lambada_openai --model_args workdir=runs/demo/a3[,step=N,seq_len=N]
    a3jax lm-eval --tasks my_task --include_path my_yaml_tasks/ --model_args workdir=W --output_path out/

Every argument is lm_eval's (`a3jax lm-eval --help` prints its help); `--model a3jax` is added
when no --model is given. Needs the `eval` extra: pip install 'a3jax[eval]'. How long inputs are
handled: a3jax/eval/lm_eval_adapter.py.
"""

from __future__ import annotations

import sys

from a3jax.errors import UserError


def add_arguments(parser) -> None:
    """The arguments are lm_eval's, passed through unparsed (cli.py routes them here raw)."""


def main_raw(argv: list[str]) -> int:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        raise UserError(f"a3jax lm-eval runs lm-evaluation-harness, which is not installed ({error}); "
                         "pip install 'a3jax[eval]'") from None
    import a3jax.eval.lm_eval_adapter  # noqa: F401  (registers --model a3jax)

    args = list(argv)
    subcommand = args[0] if args and args[0] in ("run", "ls", "validate") else None
    if subcommand in (None, "run") and "--model" not in args and not any(a.startswith("--model=") for a in args) \
            and not {"-h", "--help"} & set(args):
        args = (["run"] if subcommand else []) + ["--model", "a3jax"] + args[1 if subcommand else 0:]
    saved = sys.argv
    sys.argv = ["a3jax lm-eval"] + args
    try:
        cli_evaluate()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    return 0
