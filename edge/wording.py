"""How counts read in the sentences the commands print: "1 white cell", "2 white cells"."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and the noun in the number it takes; `nouns` where the plural is not noun + "s"."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
