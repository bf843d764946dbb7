"""Weights in and out: HF LLaMA safetensors <-> a3jax checkpoints, and a PyTorch reference.

  hf_import   HF LLaMA folder (config.json + safetensors, single or sharded) -> a3jax workdir
  hf_export   a3jax workdir -> HF LLaMA folder (+ `model.query_embed`), loadable by transformers;
              hf_state_dict(params, model_config): the same HF-named arrays from in-memory params
  torch_ref   a small PyTorch two-stream A3 model that runs an exported folder (torch extra)
  cli         the `a3jax convert` / `a3jax export` arguments and entry points

Reading and writing safetensors needs the `safetensors` package, torch_ref needs torch:
`pip install -e '.[torch]'`.
"""

from a3jax.convert.hf_export import export_hf, hf_state_dict
from a3jax.convert.hf_import import ConversionError, convert_hf, load_hf_params, model_config_from_hf

__all__ = ["ConversionError", "convert_hf", "export_hf", "hf_state_dict", "load_hf_params", "model_config_from_hf"]
