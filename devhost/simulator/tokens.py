"""Token counts for prompts and completions, the way the simulator charges and reports them.

The prompt count is the app's own: ``estimate_prompt_tokens`` and ``content_text`` *are*
``shared.llm.tokens``'s functions, with its per-message and reply-priming constants and its rule
for content parts (only ``{"type": "text"}`` parts are text). So the quota the simulator charges
and the ``usage.prompt_tokens`` it reports are exactly what the app's limiter charged for the same
messages, whichever tokenizer the process has.

The tokenizer is the shared default estimator too: tiktoken's ``o200k_base`` when its BPE file is
already in tiktoken's local cache (and intact), else the calibrated ``chars/4`` estimate; the
shared module decides, without ever touching the network. To force the estimate, point
``TIKTOKEN_CACHE_DIR`` at an empty directory: that changes the app's estimator and the
simulator's together, so the two cannot disagree.

What is the simulator's own is only what the app never needs: counting and truncating generated
text (completion tokens, ``finish_reason=length``) and naming the tokenizer in ``/_sim/stats``.
"""

from __future__ import annotations

from shared.llm import tokens as shared_tokens
from shared.llm.tokens import (
    TiktokenEstimator,
    TokenEstimator,
    content_text,
    estimate_prompt_tokens,
)

__all__ = [
    "content_text",
    "count_text_tokens",
    "estimate_prompt_tokens",
    "tokenizer_name",
    "truncate_to_tokens",
]


def _estimator() -> TokenEstimator:
    # Looked up on the module at call time, so whatever the app's estimator is, it is ours too.
    return shared_tokens.default_estimator()


def tokenizer_name() -> str:
    """Which tokenizer is in use (``tiktoken:o200k_base`` or ``chars/4``), for stats."""
    return _estimator().name


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of generated text (no message overhead)."""
    return _estimator().count_text(text) if text else 0


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_tokens`` (for ``finish_reason=length``)."""
    limit = max(0, max_tokens)
    estimator = _estimator()
    if isinstance(estimator, TiktokenEstimator):
        # Cut on token boundaries, the way a model that ran out of tokens stops.
        ids = estimator.encoding.encode_ordinary(text)
        return text if len(ids) <= limit else str(estimator.encoding.decode(ids[:limit]))
    if estimator.count_text(text) <= limit:
        return text
    # Any other estimator counts a prefix no higher than the whole (chars/4 does): binary-search
    # the longest prefix that fits.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if estimator.count_text(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]
