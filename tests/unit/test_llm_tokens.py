"""Prompt-token estimates: the limiter must charge what the endpoint charges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from devhost.simulator import tokens as simulator_tokens
from devhost.simulator.config import DeploymentLimits, LatencyModel, SimulatorConfig
from devhost.simulator.server import create_app
from shared.llm import tokens as shared_tokens
from shared.llm.tokens import (
    CharEstimator,
    TiktokenEstimator,
    TokenEstimator,
    content_text,
    estimate_prompt_tokens,
    tiktoken_cache_path,
)


class _ByteEncoding:
    """A stand-in tiktoken ``Encoding``: one token per UTF-8 byte (no download needed)."""

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="ignore")


_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}

SHAPES: dict[str, list[dict[str, Any]]] = {
    "plain": [
        {"role": "system", "content": "Classify the customer's message."},
        {"role": "user", "content": "I want my money back for order #1234"},
    ],
    "multi-part content": [
        {"role": "system", "content": [{"type": "text", "text": "You read receipts."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the total on "},
                _IMAGE,
                {"type": "text", "text": "this receipt?"},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
        },
    ],
    "names and an assistant turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "customer_42"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "", "name": "customer_42"},
    ],
    "long text": [
        {"role": "user", "content": "The parcel never arrived, again. " * 700},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français, s'il te plaît."},
        {"role": "user", "content": "注文番号 #5521 が届きません 😡🚚 — straße, ñandú, e\u0301"},
    ],
}


@pytest.fixture(params=["chars/4", "tiktoken"])
def estimator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> TokenEstimator:
    """The process's default estimator, as the app and the simulator both look it up."""
    chosen: TokenEstimator = (
        CharEstimator()
        if request.param == "chars/4"
        else TiktokenEstimator(_ByteEncoding(), "bytes")
    )
    monkeypatch.setattr(shared_tokens, "default_estimator", lambda: chosen)
    return chosen


@pytest.mark.parametrize("shape", SHAPES)
def test_the_simulator_counts_prompts_with_the_apps_estimator(
    estimator: TokenEstimator, shape: str
) -> None:
    messages = SHAPES[shape]
    assert simulator_tokens.estimate_prompt_tokens(messages) == estimate_prompt_tokens(messages)
    assert estimate_prompt_tokens(messages) == estimator.prompt_tokens(messages)
    assert simulator_tokens.tokenizer_name() == estimator.name


@pytest.mark.parametrize("shape", SHAPES)
async def test_the_simulator_charges_and_reports_exactly_the_apps_estimate(
    estimator: TokenEstimator, shape: str
) -> None:
    messages = SHAPES[shape]
    max_tokens = 50
    config = SimulatorConfig(
        api_key=None,
        accept_bearer=False,
        admin_key="admin",
        deployments={"chat": DeploymentLimits(tpm=6_000_000)},
        latency=LatencyModel(fixed_ms=0),
    )
    async with TestClient(TestServer(create_app(config))) as client:
        response = await client.post(
            "/openai/deployments/chat/chat/completions?api-version=2024-10-21",
            json={"messages": messages, "max_tokens": max_tokens},
        )
        assert response.status == 200, await response.text()
        usage = (await response.json())["usage"]
        admin = {"x-sim-admin-key": "admin"}
        stats = (await (await client.get("/_sim/stats", headers=admin)).json())["deployments"][
            "chat"
        ]
    # What shared/llm/guarded.py charges the limiter before the call: prompt + max_tokens.
    app_charge = estimator.prompt_tokens(messages) + max_tokens
    assert usage["prompt_tokens"] == estimator.prompt_tokens(messages)
    assert stats["charged_tokens"] == app_charge


def test_only_text_parts_are_prompt_text() -> None:
    parts = [
        {"type": "text", "text": "a"},
        _IMAGE,
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"text": "untyped parts are invalid, not text"},
        {"type": "text", "text": "b"},
    ]
    assert content_text(parts) == "ab"
    assert content_text("plain") == "plain"
    assert content_text(None) == ""
    assert content_text({"type": "text", "text": "not a list"}) == ""
    estimator = CharEstimator()
    with_image = [{"role": "user", "content": [{"type": "text", "text": "y" * 40}, _IMAGE]}]
    assert estimator.prompt_tokens(with_image) == 3 + 4 + 10


def test_the_simulator_truncates_completions_to_the_tokens_it_counts(
    estimator: TokenEstimator,
) -> None:
    text = "Your refund of €42 is on its way — 返金 🚚. " * 20
    for limit in (0, 1, 7, 50, 10_000):
        cut = simulator_tokens.truncate_to_tokens(text, limit)
        assert text.startswith(cut)
        assert simulator_tokens.count_text_tokens(cut) <= limit
        if cut != text:  # the longest such prefix, to within one token
            assert simulator_tokens.count_text_tokens(text[: len(cut) + 4]) > limit
    assert simulator_tokens.truncate_to_tokens(text, 10_000) == text


def test_the_default_estimator_is_chars_when_tiktoken_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    shared_tokens.default_estimator.cache_clear()
    try:
        assert shared_tokens.default_estimator().name == "chars/4"
        assert simulator_tokens.tokenizer_name() == "chars/4"
    finally:
        monkeypatch.undo()
        shared_tokens.default_estimator.cache_clear()


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
