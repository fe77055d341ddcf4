"""Prompt-token estimates: the limiter must charge what the endpoint charges."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from devhost.simulator import tokens as simulator_tokens
from shared.llm.tokens import CharEstimator, TiktokenEstimator, tiktoken_cache_path


def _random_messages(rng: random.Random) -> list[dict[str, str]]:
    alphabet = string.ascii_letters + string.digits + " .,;:!?-'\"\n" + "éßø€"
    messages = []
    for i in range(rng.randint(1, 5)):
        size = rng.choice([0, 3, 40, 400, 3000])
        text = "".join(rng.choice(alphabet) for _ in range(size))
        message = {"role": "system" if i == 0 else "user", "content": text}
        if rng.random() < 0.2:
            message["name"] = "agent_" + str(i)
        messages.append(message)
    return messages


def test_the_estimate_agrees_with_the_simulators_within_two_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMULATOR_TOKENIZER", "estimate")
    simulator_tokens._codec.cache_clear()
    try:
        rng = random.Random(11)
        ours = CharEstimator()
        for _ in range(200):
            messages = _random_messages(rng)
            theirs = simulator_tokens.estimate_prompt_tokens(messages)
            assert abs(ours.prompt_tokens(messages) - theirs) <= max(1, 0.02 * theirs)
    finally:
        simulator_tokens._codec.cache_clear()


def test_the_estimate_grows_with_the_text_and_the_message_count() -> None:
    estimator = CharEstimator()
    one = estimator.prompt_tokens([{"role": "user", "content": "x" * 400}])
    two = estimator.prompt_tokens([{"role": "user", "content": "x" * 400}] * 2)
    assert one == 3 + 4 + 100
    assert two == 3 + 2 * (4 + 100)


def test_content_given_as_parts_counts_its_text() -> None:
    estimator = CharEstimator()
    parts = [{"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]
    assert estimator.prompt_tokens(parts) == 3 + 4 + 10  # type: ignore[list-item]


def test_tiktoken_is_not_used_when_its_encoding_is_not_cached(tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path)}
    assert TiktokenEstimator.load_cached(env=env) is None


def test_tiktoken_is_not_used_when_the_cached_file_is_corrupt(tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path)}
    path = tiktoken_cache_path("o200k_base", env=env)
    assert path is not None
    path.write_bytes(b"not a bpe file")
    # tiktoken itself would delete this file and download a fresh copy; we must not let it.
    assert TiktokenEstimator.load_cached(env=env) is None
    assert path.exists()


def test_an_empty_cache_setting_disables_tiktoken() -> None:
    assert tiktoken_cache_path("o200k_base", env={"TIKTOKEN_CACHE_DIR": ""}) is None
