"""Tiny A3 model on the embedded stdlib corpus: the CPU default used by `make demo`."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0

    config.model = ConfigDict()
    config.model.variant = "a3"  # "a3" (two streams) or "causal" (single stream, next token)
    config.model.vocab_size = 259  # byte tokenizer: 256 bytes + PAD, BOS, EOS
    config.model.d_model = 128
    config.model.n_layers = 3
    config.model.n_heads = 4
    config.model.n_kv_heads = 2
    config.model.head_dim = 0  # 0 = d_model // n_heads
    config.model.ffn_dim = 384
    config.model.rope_theta = 10000.0
    config.model.rope_scaling = ConfigDict()
    config.model.rope_scaling.kind = "none"  # "none" or "llama3"
    config.model.rope_scaling.factor = 8.0
    config.model.rope_scaling.low_freq_factor = 1.0
    config.model.rope_scaling.high_freq_factor = 4.0
    config.model.rope_scaling.original_max_position = 8192
    config.model.norm_eps = 1e-5
    config.model.tie_embeddings = True
    config.model.init_std = 0.02
    config.model.attention = "xla"  # auto, xla, cudnn, pallas, splash (TPU; needs data.align_groups)
    config.model.attention_chunks = 1  # xla/cudnn: static key prefixes per chunk of rows (1 = off)
    config.model.dtype = "float32"  # compute dtype (bfloat16 on accelerators); params stay float32
    config.model.remat = "none"  # "none", "full" or "dots"

    config.data = ConfigDict()
    config.data.source = "stdlib"  # stdlib, text, jsonl, parquet or arrayrecord (from `a3jax prepare`)
    config.data.paths = ()  # files / globs / folders (text, jsonl, parquet) or the prepared folder
    config.data.text_field = "text"  # jsonl / parquet field holding the text
    config.data.doc_separator = ""  # text: split each file into documents here ("" = one per file)
    config.data.tokenizer = "bytes"  # "bytes" or a local tokenizer.json / SentencePiece .model
    config.data.bos_token = ""  # "" = found by the usual names (<s>, <|begin_of_text|>, ...)
    config.data.eos_token = ""
    config.data.pad_token = ""  # "" = found, else EOS
    config.data.seq_len = 128
    config.data.eval_fraction = 0.02  # share of files held out, chosen by a hash of the path
    config.data.max_files = 0  # 0 = all files of the source
    config.data.worker_count = 0
    config.data.shuffle = True
    # One group size per step (needs orders.group_size_scope="batch"), every document's groups
    # aligned to it: the static-mask attention (splash) needs this; costs < g padding per document.
    config.data.align_groups = False

    config.orders = ConfigDict()
    # Curriculum: stages separated by ';', each "SAMPLER until STEP" except the last.
    config.orders.curriculum = "0.5*ar + 0.25*span(0.05,0.3) + 0.25*random_sizes(1,8)"
    config.orders.eval = ("ar", "random(4)")
    # "example": each example draws its sampler's parameters; "batch": one draw per step (one
    # group size per batch, e.g. random_sizes -> random(k)), so the masks can be static.
    config.orders.group_size_scope = "example"

    config.mesh = ConfigDict()
    config.mesh.data = -1  # -1: all devices not used by the other axes
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.devices = 0  # use the first N devices; 0 = all
    config.mesh.preset = ""  # a key of mesh.presets: its (data, fsdp, tensor) replace the degrees
    config.mesh.presets = {"cpu": (-1, 1, 1)}
    # Logical axis -> mesh axes (comma-separated; "" = replicated). See a3jax/parallel.py.
    config.mesh.rules = (
        ("batch", "data,fsdp"), ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"),
        ("kv_heads", "tensor"), ("mlp", "tensor"), ("layers", ""), ("norm", ""),
    )

    config.train = ConfigDict()
    config.train.batch_size = 8  # many small steps beat few large ones at this scale
    config.train.grad_accum = 1  # micro-batches per step (the batch is split, gradients summed)
    config.train.steps = 1200
    config.train.lr = 3e-3
    config.train.warmup_steps = 50
    config.train.schedule = "cosine"  # "cosine", "constant" or "wsd"
    config.train.decay_fraction = 0.2  # wsd: share of steps spent decaying
    config.train.min_lr_ratio = 0.1
    config.train.weight_decay = 0.1
    config.train.b1 = 0.9
    config.train.b2 = 0.95
    config.train.eps = 1e-8
    config.train.clip_norm = 1.0
    config.train.query_lr_scale = 1.0  # learning rate of the query stream's vector, x train.lr
    # Start a fresh run from the latest weights of another workdir (e.g. a causal model, adapted to
    # a3: every weight copied, the query vector made by query_init: "normal" or "mean").
    config.train.init_from = ""
    config.train.query_init = "normal"
    config.train.peak_flops = 0.0  # peak FLOP/s per device for MFU; 0 = from flops.PEAK_FLOPS
    config.train.log_every = 20
    config.train.eval_every = 300
    config.train.eval_rows = 64
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 2
    # Non-finite loss/gradients: the step's update is skipped (counted as train/skipped); after this
    # many consecutive skipped steps training stops, keeping the last good checkpoint.
    config.train.max_bad_steps = 10
    config.train.inject_nan_at_steps = ()  # testing aid: steps whose gradients are made NaN
    return config
