"""The one config schema: frozen dataclasses whose fields and defaults ARE the config's keys and
defaults. `defaults(cls)` gives a section's keys as plain values (what the base ConfigDict is
built from); `parse_section(cls, mapping, name)` turns a mapping back into the typed section,
coercing each value to its field's type: missing keys take the defaults, an unknown key or a value
of the wrong type is a ConfigError naming `name.key` and the fix. A field whose type is itself a
dataclass (model.rope_scaling) is a nested section.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import typing
from collections.abc import Mapping

from a3jax.errors import ConfigError


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def defaults(cls) -> dict:
    """{key: default} of a section dataclass as plain values (nested sections as dicts), the
    declared defaults (not values a __post_init__ derives from them)."""
    out = {}
    for field in dataclasses.fields(cls):
        value = _default(field)
        out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    return value


def jsonable(value):
    """Mappings as dicts and sequences as lists, recursively (for JSON)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    return value


def _coerce(where: str, value, annotation, default):
    """value as the field's type, or a ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return parse_section(annotation, value, where)
    try:
        if annotation is bool:
            if not isinstance(value, bool):
                raise TypeError(f"expected True or False, got {value!r}")
            return value
        if annotation is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError(f"expected a number, got {value!r}")
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            return value
        if origin is tuple:
            items = (value,) if isinstance(value, (str, int, float)) else tuple(value)
            inner = typing.get_args(annotation)[0]
            if inner is int:
                return tuple(_coerce(where, v, int, None) for v in items)
            if inner is str:
                return tuple(str(v) for v in items)
            return tuple(tuple(str(x) for x in pair) for pair in items)  # rules: (logical, axes)
        if origin is collections.abc.Mapping:
            return {str(k): tuple(int(d) for d in v) for k, v in dict(value).items()}
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key {where}={value!r} has the wrong type ({error}); "
                          f"the default is {default!r}") from None
    raise TypeError(f"no coercion for {where}: {annotation}")  # a bug in the schema


def parse_section(cls, mapping, section: str):
    """A section dataclass from a mapping: missing keys take defaults, unknown keys are refused.
    The dataclass's own checks (__post_init__) raise ConfigError too."""
    if hasattr(mapping, "to_dict"):  # a ConfigDict
        mapping = mapping.to_dict()
    values = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], fields, n=1)
        did_you_mean = f" (did you mean {section}.{hint[0]}?)" if hint else ""
        raise ConfigError(f"unknown config key {section}.{unknown[0]}{did_you_mean}; valid keys under "
                          f"{section}: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        default = _default(field)
        if name in values:
            kwargs[name] = _coerce(f"{section}.{name}", values[name], hints[name], default)
        else:
            kwargs[name] = default
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None
