"""Reading a chat request the way a support model would: topic, mood, entities, instructions.

Evidence comes from the user messages (the customer's text, a draft to critique); instructions
come from system and developer messages plus the user messages. System prompts are kept out of
the evidence on purpose: they describe every label and signal ("escalate legal threats"), so
their words would be evidence for everything.

Nothing here is random; the same messages always give the same ``TextAnalysis``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devhost.simulator import vocabulary as vocab
from devhost.simulator.tokens import content_text
from shared.domain.results import IntentLabel

# The pipeline's own taxonomy: what the simulated model classifies into.
INTENT_LABELS = tuple(label.value for label in IntentLabel)

_MAX_GRAM = 5
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_ORDER_PATTERNS = (
    re.compile(r"#\s?(\d{3,})\b"),
    re.compile(r"\b((?:ORD|ORDER|PO|INV|SO)[-_]?[A-Z0-9]{2,}(?:-[A-Z0-9]+)*)\b", re.IGNORECASE),
    re.compile(r"\border\s+(?:number\s+|no\.?\s*|num\.?\s*|id\s+)?(\d{3,})\b", re.IGNORECASE),
)
_AMOUNT_PATTERNS = (
    re.compile(r"[$€£]\s?\d{1,7}(?:[.,]\d{3})*(?:[.,]\d{1,2})?"),
    re.compile(
        r"\b\d{1,7}(?:[.,]\d{1,2})?\s?(?:usd|eur|gbp|dollars?|euros?|pounds?)\b", re.IGNORECASE
    ),
)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_CARD_RE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE_RE = re.compile(r"(?:\+\d{1,3}[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{3,4}\b")
_PRODUCT_RE = re.compile(
    r"\b(?:([A-Z][\w-]+)\s+)?(?i:(" + "|".join(sorted(vocab.PRODUCT_NOUNS)) + r"))s?\b"
)
_FINAL_REVISION_PATTERNS = (
    re.compile(r"\b(?:final|last)\s+(?:allowed\s+|permitted\s+|possible\s+)?revision\b", re.I),
    re.compile(r"\bno\s+(?:more|further)\s+revisions?\b", re.I),
    re.compile(r"\brevisions?[\s_]*(?:left|remaining)\"?\s*[:=]?\s*0\b", re.I),
    re.compile(r"\bremaining[\s_]*revisions?\"?\s*[:=]?\s*0\b", re.I),
    re.compile(r"\bfinal[\s_]*revision\"?\s*[:=]\s*true\b", re.I),
    re.compile(
        r"\b(?:do\s+not|don't|cannot|can't|may\s+not)\s+(?:ask\s+for|request|choose)\s+"
        r"(?:another|a\s+further|any\s+more)\s+revision",
        re.I,
    ),
)
_REVISION_OF_RE = re.compile(r"\brevision\s+(\d+)\s*(?:of|/)\s*(\d+)\b", re.I)
_STEM_SUFFIXES = ("ing", "ed", "es", "s", "e")


def stem(word: str) -> str:
    """A crude, consistent stem: enough for ``charged``/``charges``/``charge`` to meet."""
    for suffix in _STEM_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) >= 4 and word[-1] == word[-2] and word[-1].isalpha():
        word = word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (apostrophes normalised, punctuation dropped)."""
    return _WORD_RE.findall(text.lower().replace("\u2019", "'"))


@functools.lru_cache(maxsize=4096)
def stem_phrase(phrase: str) -> str:
    """The stemmed form of a phrase, as it appears among a text's n-grams."""
    return " ".join(stem(w) for w in words(phrase))


def ngrams(tokens: Sequence[str]) -> Counter[str]:
    """Every run of 1.._MAX_GRAM stemmed words, counted."""
    grams: Counter[str] = Counter()
    for size in range(1, _MAX_GRAM + 1):
        for start in range(len(tokens) - size + 1):
            grams[" ".join(tokens[start : start + size])] += 1
    return grams


def normalize_label(value: str) -> str:
    """``RefundRequest`` / ``refund-request`` / ``Refund request`` -> ``refund_request``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", value)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


@dataclass(frozen=True)
class LabelScore:
    """Evidence for one label: a score and the phrases that produced it."""

    value: str
    score: float
    matched: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextAnalysis:
    """What the simulator knows about a request before writing an answer."""

    evidence: str
    instructions: str
    grams: Counter[str] = field(repr=False)
    language: str
    order_ids: tuple[str, ...]
    amounts: tuple[str, ...]
    products: tuple[str, ...]
    has_pii: bool
    anger: float
    legal: bool
    fraud: bool
    repeated: bool
    human_request: bool
    urgent: bool
    final_revision: bool
    intent: LabelScore

    @property
    def angry(self) -> bool:
        return self.anger >= 0.3

    @property
    def needs_human(self) -> bool:
        """Anger, legal threats, fraud, repeated failures or an explicit request for a person."""
        return self.angry or self.legal or self.fraud or self.repeated or self.human_request

    @property
    def escalation_signal(self) -> bool:
        """What makes a critic escalate rather than approve: legal, fraud or anger."""
        return self.legal or self.fraud or self.angry

    @property
    def severity(self) -> int:
        """0 (low) .. 3 (urgent), for priority-like fields."""
        if self.legal or self.fraud or (self.angry and (self.repeated or self.human_request)):
            return 3
        if self.angry or self.repeated or self.human_request or self.urgent:
            return 2
        if self.intent.value in ("feedback", "product_question"):
            return 0
        return 1

    @property
    def evidence_strength(self) -> float:
        """0..1: how clearly the text points at its top intent."""
        return min(1.0, self.intent.score / 4.0)

    def score(self, value: str) -> LabelScore:
        """Evidence in the text for an enum value, via its own tokens and the synonym table."""
        return score_label(value, self.grams)


def score_label(value: str, grams: Mapping[str, int]) -> LabelScore:
    """Score ``value`` against stemmed n-grams: phrases weigh more the longer they are, and
    curated phrases more than the value's own words."""
    key = normalize_label(value)
    tokens = [t for t in key.split("_") if t]
    phrases: set[str] = set(vocab.SYNONYMS.get(key, ()))
    for token in tokens:
        phrases.update(vocab.SYNONYMS.get(token, ()))
    score = 0.0
    matched: list[str] = []
    seen: set[str] = set()
    for phrase in sorted(phrases):
        stemmed = stem_phrase(phrase)
        if stemmed and stemmed not in seen and stemmed in grams:
            seen.add(stemmed)
            score += 1.0 + 0.5 * stemmed.count(" ")
            matched.append(phrase)
    for token in tokens:
        stemmed = stem(token)
        if stemmed in seen or stemmed not in grams:
            continue
        seen.add(stemmed)
        # A value's own words are weaker evidence than a curated phrase: "order" appears in
        # most messages, whatever they are about.
        score += 0.1 if token in vocab.GENERIC_TOKENS else 0.75
        matched.append(token)
    return LabelScore(value=value, score=score, matched=tuple(matched))


def best_label(values: Sequence[str], grams: Mapping[str, int]) -> LabelScore:
    """The best-scoring value; with no evidence, a fallback value (``other``...) if present."""
    scores = [score_label(v, grams) for v in values]
    best = max(scores, key=lambda s: s.score, default=LabelScore("", 0.0))
    if best.score > 0:
        return best
    for fallback in vocab.FALLBACK_VALUES:
        for candidate in scores:
            if normalize_label(candidate.value) == fallback:
                return candidate
    return best


def detect_language(text: str) -> str:
    """A two-letter code from stopword counts; English unless another language clearly wins."""
    counts = Counter(words(text))
    hits = {
        lang: sum(counts[w] for w in stopwords)
        for lang, stopwords in vocab.LANGUAGE_STOPWORDS.items()
    }
    best = max(hits, key=lambda lang: hits[lang])
    if best != "en" and hits[best] >= 2 and hits[best] > hits["en"]:
        return best
    return "en"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def extract_order_ids(text: str) -> tuple[str, ...]:
    """Order references: ``#12345`` -> ``12345``, ``ORD-881`` as written, ``order 1234``."""
    found: list[tuple[int, str]] = []
    for pattern in _ORDER_PATTERNS:
        for match in pattern.finditer(text):
            value = match.group(1)
            if any(ch.isdigit() for ch in value):
                found.append((match.start(), value.upper() if not value.isdigit() else value))
    return _unique(value for _, value in sorted(found))


def extract_amounts(text: str) -> tuple[str, ...]:
    """Money amounts as written (``$49.99``, ``20 EUR``)."""
    found = [(m.start(), m.group(0).strip()) for p in _AMOUNT_PATTERNS for m in p.finditer(text)]
    return _unique(value for _, value in sorted(found))


def extract_products(text: str) -> tuple[str, ...]:
    """Product mentions: a known product noun, with the capitalised word before it if any."""
    found = []
    for match in _PRODUCT_RE.finditer(text):
        brand, noun = match.group(1), match.group(2).lower()
        found.append(f"{brand} {noun}" if brand and brand.lower() not in ("my", "the") else noun)
    return _unique(found)


def amount_value(amount: str) -> float | None:
    """The number in an amount string (``$1,234.50`` -> 1234.5), or None."""
    digits = re.search(r"\d[\d.,]*", amount)
    if digits is None:
        return None
    raw = digits.group(0).rstrip(".,")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw):
        raw = raw.replace(",", "")
    else:
        raw = raw.replace(",", ".")
    try:
        return float(raw)
    except ValueError:
        return None


def is_final_revision(text: str) -> bool:
    """Whether the prompt says no further revision may be requested (see the package docs)."""
    if any(pattern.search(text) for pattern in _FINAL_REVISION_PATTERNS):
        return True
    return any(int(m.group(1)) >= int(m.group(2)) for m in _REVISION_OF_RE.finditer(text))


def _anger(text: str, grams: Mapping[str, int]) -> float:
    hits = sum(1 for phrase in vocab.ANGER if stem_phrase(phrase) in grams)
    # Capitals that open an identifier (ORD-20931, SKU12) are not shouting.
    shouted = re.findall(r"\b[A-Z]{3,}\b(?![-_/#]?\d)", text)
    shouting = 0.3 if len(shouted) >= 2 else 0.0
    exclaiming = 0.2 if text.count("!") >= 3 else 0.0
    return min(1.0, 0.35 * hits + shouting + exclaiming)


def _any_phrase(phrases: Iterable[str], grams: Mapping[str, int]) -> bool:
    return any(stem_phrase(p) in grams for p in phrases)


def _message_texts(messages: Sequence[Mapping[str, Any]], roles: set[str]) -> list[str]:
    return [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") in roles
    ]


def analyse(messages: Sequence[Mapping[str, Any]]) -> TextAnalysis:
    """Everything the writer and the schema generator need from a request's messages."""
    evidence = "\n".join(_message_texts(messages, {"user"}))
    instructions = "\n".join(_message_texts(messages, {"system", "developer", "user"}))
    grams = ngrams([stem(w) for w in words(evidence)])
    pii = bool(_EMAIL_RE.search(evidence) or _CARD_RE.search(evidence))
    pii = pii or bool(_PHONE_RE.search(evidence))
    return TextAnalysis(
        evidence=evidence,
        instructions=instructions,
        grams=grams,
        language=detect_language(evidence),
        order_ids=extract_order_ids(evidence),
        amounts=extract_amounts(evidence),
        products=extract_products(evidence),
        has_pii=pii,
        anger=_anger(evidence, grams),
        legal=_any_phrase(vocab.LEGAL, grams),
        fraud=_any_phrase(vocab.FRAUD, grams),
        repeated=_any_phrase(vocab.REPEATED, grams),
        human_request=_any_phrase(vocab.HUMAN_REQUEST, grams),
        urgent=_any_phrase(vocab.URGENCY, grams),
        final_revision=is_final_revision(instructions),
        intent=best_label(INTENT_LABELS, grams),
    )
