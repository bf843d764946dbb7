"""Any-order decoding: the exact KV cache, plans, samplers and prompts with gaps."""

from a3jax.decode.cache import KVCache, extend, init_cache
from a3jax.decode.plans import Plan, Prompt, parse_plan, parse_prompt
from a3jax.decode.sampler import GenerateResult, SampleConfig, generate, recompute_groups

__all__ = ["GenerateResult", "KVCache", "Plan", "Prompt", "SampleConfig", "extend", "generate", "init_cache",
           "parse_plan", "parse_prompt", "recompute_groups"]
