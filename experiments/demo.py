"""The `demo` preset (a3jax/configs/presets/demo.py): what `make demo` runs. get_config() is the
adaptation stage; pretrain_config() the causal pretraining before it; BPE_VOCAB the size of the
byte-level BPE `a3jax demo` trains on the training files (0: the byte tokenizer)."""

from a3jax.configs.presets.demo import BPE_VOCAB, get_config, pretrain_config  # noqa: F401
