"""Prompt-token estimates for charging the quota limiter before a call.

Azure OpenAI charges a request against the deployment's TPM at the moment it arrives, with an
*estimate*: the prompt's tokens plus ``max_tokens``. The limiter must charge the same amount, or it
will either waste quota (over-estimate) or draw 429s (under-estimate).

This module is the one definition of that prompt count. The devhost simulator charges and reports
``usage.prompt_tokens`` with it too (``devhost/simulator/tokens.py``), so the limiter's charge and
the simulator's are the same number by construction, not by keeping two copies in step.

The count, per the chat format's accounting (``count_prompt_tokens``)::

    prompt tokens = 3 (reply priming)
                  + sum over messages of 4 + tokens(content_text(content))
                                         [+ 1 + tokens(name) when the message has a name]

``content_text`` is a string content as is, or the concatenated ``text`` of a content-part list's
``{"type": "text"}`` parts. Image, audio, file and any other parts are not text and count nothing
here: a data URL or image URL is not tokenized as text by Azure (it prices an image by its tiles,
which this estimate does not model; the app sends no images). Content of any other shape counts
nothing either.

Two ways to count the tokens of a text:

* ``TiktokenEstimator`` counts with the model's real tokenizer. tiktoken downloads its BPE files on
  first use and caches them; offline that download would hang or fail, so it is used only when the
  encoding file is already in tiktoken's local cache (``TIKTOKEN_CACHE_DIR`` or the temp-dir
  default) and passes tiktoken's own SHA-256 check. Nothing here ever touches the network.
* ``CharEstimator`` is the calibrated fallback: ``ceil(chars / 4)``, the usual English ratio.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
"""Framing each chat message costs: ``<|start|>{role}\\n ... <|end|>\\n``."""
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``."""

_ENCODING_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}

Messages = Sequence[Mapping[str, Any]]


class TokenEstimator(Protocol):
    """Counts the prompt tokens a chat request will be charged for."""

    name: str

    def count_text(self, text: str) -> int:
        """Tokens in a piece of text, with no chat framing."""
        ...

    def prompt_tokens(self, messages: Messages) -> int: ...


def content_text(content: Any) -> str:
    """The text of a message's content that is counted as prompt text.

    A string is taken as is; a list of content parts contributes the ``text`` of its
    ``{"type": "text"}`` parts. Image, audio, file and other parts are not text (Azure does not
    count them as prompt text), and neither is content of any other shape.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Messages, count_text: Callable[[str], int]) -> int:
    """Prompt tokens of ``messages`` when a text has ``count_text(text)`` tokens.

    Each message's text plus a fixed per-message framing, its name (if any) plus one token, and
    the reply priming: how the chat format accounts for role markers.
    """
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        text = content_text(message.get("content"))
        if text:
            total += count_text(text)
        name = message.get("name")
        if isinstance(name, str) and name:
            total += TOKENS_PER_NAME + count_text(name)
    return total


class CharEstimator:
    """``ceil(chars / 4)`` per text, plus the chat framing overhead."""

    def __init__(self, *, chars_per_token: float = CHARS_PER_TOKEN) -> None:
        if chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        self._ratio = chars_per_token
        self.name = f"chars/{chars_per_token:g}"

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / self._ratio)

    def prompt_tokens(self, messages: Messages) -> int:
        return count_prompt_tokens(messages, self.count_text)


class TiktokenEstimator:
    """Exact counts with a tiktoken encoding that is already on disk."""

    def __init__(self, encoding: Any, name: str) -> None:
        self._encoding = encoding
        self.name = f"tiktoken:{name}"

    @property
    def encoding(self) -> Any:
        """The tiktoken ``Encoding`` (for callers that also need to decode, like the simulator)."""
        return self._encoding

    def count_text(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text)) if text else 0

    def prompt_tokens(self, messages: Messages) -> int:
        return count_prompt_tokens(messages, self.count_text)

    @classmethod
    def load_cached(
        cls, encoding_name: str = "o200k_base", *, env: Mapping[str, str] | None = None
    ) -> TiktokenEstimator | None:
        """The encoding if tiktoken can load it from its local cache, else None.

        Never downloads: a missing file, or one whose hash tiktoken would reject (it would then
        fetch a fresh copy), means None.
        """
        path = tiktoken_cache_path(encoding_name, env=os.environ if env is None else env)
        if path is None or not _is_intact(path, _ENCODING_SHA256.get(encoding_name, "")):
            return None
        try:
            import tiktoken

            encoding = tiktoken.get_encoding(encoding_name)
        except Exception as exc:  # a corrupt cache file or an incompatible tiktoken
            log.warning("tiktoken encoding %s unusable (%s); using chars/4", encoding_name, exc)
            return None
        return cls(encoding, encoding_name)


def tiktoken_cache_path(encoding_name: str, *, env: Mapping[str, str]) -> Path | None:
    """Where tiktoken keeps ``encoding_name`` on disk, following tiktoken's own lookup rules."""
    url = _ENCODING_URLS.get(encoding_name)
    if url is None:
        return None
    if "TIKTOKEN_CACHE_DIR" in env:
        cache_dir = env["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in env:
        cache_dir = env["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:  # an empty setting disables tiktoken's cache: it would always download
        return None
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _is_intact(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


@lru_cache(maxsize=1)
def default_estimator() -> TokenEstimator:
    """tiktoken when its encoding is cached locally, else the calibrated chars/4 estimate."""
    estimator: TokenEstimator | None = TiktokenEstimator.load_cached()
    if estimator is None:
        estimator = CharEstimator()
    log.info("prompt tokens estimated with %s", estimator.name)
    return estimator


def estimate_prompt_tokens(messages: Messages) -> int:
    """Prompt tokens of ``messages`` with the process's default estimator."""
    return default_estimator().prompt_tokens(messages)
