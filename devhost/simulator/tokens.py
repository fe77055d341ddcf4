"""Token counts for prompts and completions, the way the simulator charges and reports them.

The simulator uses ``tiktoken``'s ``o200k_base`` encoding (the gpt-4o family) when its BPE file is
already in tiktoken's local cache, and otherwise a calibrated character estimate. tiktoken fetches
missing encodings over the network, which hangs or fails offline, so this module never asks it to:
it looks for the cached file itself (same location rule as tiktoken: ``TIKTOKEN_CACHE_DIR``,
else ``DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``, file named by the SHA-1 of the URL)
and checks its SHA-256 before loading it. ``SIMULATOR_TOKENIZER=estimate`` forces the estimate.

The estimate, per the chat format's accounting:

    prompt tokens = 3 (reply priming)
                  + sum over messages of 4 + ceil(chars(content) / 4)
                                         [+ 1 + ceil(chars(name) / 4) when the message has a name]
    text tokens   = ceil(chars / 4)

This module is deliberately standalone (standard library plus optional tiktoken) so that other
components can reproduce the same algorithm without importing devhost.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

ENCODING_NAME = "o200k_base"
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_ENCODING_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
_FORCE_ESTIMATE_ENV = "SIMULATOR_TOKENIZER"


class _Codec:
    """Encode/decode pair behind one interface, whichever tokenizer is in use."""

    def __init__(
        self,
        name: str,
        count: Callable[[str], int],
        truncate: Callable[[str, int], str],
    ) -> None:
        self.name = name
        self.count = count
        self.truncate = truncate


def _cached_encoding_path() -> str | None:
    """Where tiktoken would keep the encoding file, or None when caching is disabled."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    return os.path.join(cache_dir, hashlib.sha1(_ENCODING_URL.encode()).hexdigest())


def _file_is_intact(path: str) -> bool:
    # tiktoken deletes a cached file whose hash does not match and then downloads it again;
    # checking first keeps that network path unreachable.
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest() == _ENCODING_SHA256
    except OSError:
        return False


def _estimate_count(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _estimate_truncate(text: str, max_tokens: int) -> str:
    return text[: max(0, max_tokens) * CHARS_PER_TOKEN]


_ESTIMATE = _Codec(f"estimate:chars/{CHARS_PER_TOKEN}", _estimate_count, _estimate_truncate)


@functools.cache
def _codec() -> _Codec:
    if os.environ.get(_FORCE_ESTIMATE_ENV, "").lower() == "estimate":
        return _ESTIMATE
    path = _cached_encoding_path()
    if path is None or not os.path.isfile(path) or not _file_is_intact(path):
        log.debug("tiktoken %s is not cached locally; using the character estimate", ENCODING_NAME)
        return _ESTIMATE
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(ENCODING_NAME)
    except Exception as exc:  # any failure means "no tokenizer", never a failed request
        log.warning("tiktoken could not load %s (%s); using the estimate", ENCODING_NAME, exc)
        return _ESTIMATE

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    def truncate(text: str, max_tokens: int) -> str:
        ids = encoding.encode_ordinary(text)
        return text if len(ids) <= max_tokens else encoding.decode(ids[: max(0, max_tokens)])

    return _Codec(ENCODING_NAME, count, truncate)


def tokenizer_name() -> str:
    """Which tokenizer is in use (``o200k_base`` or the estimate), for stats and diagnostics."""
    return _codec().name


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of generated text (no message overhead)."""
    return _codec().count(text) if text else 0


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_tokens`` (for ``finish_reason=length``)."""
    return _codec().truncate(text, max_tokens)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts: Iterable[Any] = content
        return "".join(
            str(part.get("text", ""))
            for part in parts
            if isinstance(part, Mapping) and part.get("type") in ("text", None)
        )
    return ""


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request, as charged against the quota and reported in usage.

    Counts each message's text plus a fixed per-message overhead and the reply priming, which is
    how the chat format accounts for role markers.
    """
    codec = _codec()
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        text = content_text(message.get("content"))
        if text:
            total += codec.count(text)
        name = message.get("name")
        if isinstance(name, str) and name:
            total += TOKENS_PER_NAME + codec.count(name)
    return total
