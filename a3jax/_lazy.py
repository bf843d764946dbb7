"""Lazy package exports: `name -> submodule`, imported on first attribute access (keeps `import
a3jax.data` / `import a3jax.eval` cheap, and worker processes free of JAX)."""

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for a package whose names live in its submodules."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        package_module = importlib.import_module(package)
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(package_module, name, value)
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
