"""``--run-config key=value ...`` as users type it, for every fedvlp command (no heavy import)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

__all__ = ["parse_value", "run_overrides"]

# A value TOML cannot read is taken as a string when it is one bare word or path, as users type
# `recipe=convirt` or `sites=sites/cxr`; anything with quotes or brackets keeps TOML's error.
_BARE_WORD = re.compile(r"[A-Za-z0-9_./:~+-][A-Za-z0-9_./:~+@-]*")


def parse_value(raw: str) -> Any:
    """A ``--run-config`` value: TOML (numbers, booleans, quoted strings), else a bare word as a string.

    Raises
    ------
    ValueError
        For text that is neither TOML nor a bare word (e.g. an unclosed quote).
    """
    if not raw:
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as err:
        if _BARE_WORD.fullmatch(raw):
            return raw
        raise ValueError(f'{raw!r}: expected a TOML value (1, 0.5, true, "text") or one bare word ({err})') from err


def run_overrides(items: list[str] | None, origin: str = "--run-config") -> dict[str, Any]:
    """``key=value`` items (TOML values as ``flwr run --run-config`` takes them, or bare words) as a dict.

    Raises
    ------
    ConfigError
        Naming ``origin`` and the item or key, and what was expected.
    """
    from fedvlp.core.config import ConfigError

    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(origin, item, "key=value, e.g. rounds=3 recipe=convirt")
        try:
            values[key.strip()] = parse_value(raw.strip())
        except ValueError as err:
            raise ConfigError(origin, key.strip(), f"a TOML value or one bare word, got {raw.strip()!r}") from err
    return values
