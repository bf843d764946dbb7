"""Base configs shipped inside the package, loadable by name (`--config=tiny`): the CPU default,
the Llama-3.2-1B / 3.1-8B shapes, the paper's adaptation recipes, and the curriculum presets.
experiments/ holds the user-facing files built on them."""

NAMES = ("tiny", "demo", "llama3_1b", "llama3_8b", "adapt_tiny", "adapt_llama3_1b", "adapt_llama3_8b", "adapt_smollm2")
