"""The LLM layer: quota-aware limiting, one retry layer, breakers, fallbacks, cache and budgets.

``build_chat_model`` is what the composition root calls; everything can also be assembled by hand
(tests, the benchmark) from the parts below.
"""

from __future__ import annotations

from shared.config import Settings
from shared.llm.breaker import BreakerPolicy, Breakers, BreakerState, CircuitBreaker
from shared.llm.budget import (
    CustomerBudget,
    SqliteCustomerBudget,
    StoreCustomerBudget,
    decide_reschedule,
    total_budget_reason,
)
from shared.llm.cache import ResponseCache
from shared.llm.clock import Clock, ManualClock, SystemClock
from shared.llm.endpoint import ChatEndpoint, EndpointCall, EndpointReply, RateLimitInfo
from shared.llm.guarded import GuardedChatModel
from shared.llm.ledger import (
    QuotaLedger,
    ShareCoordinator,
    SqliteQuotaLedger,
    StoreQuotaLedger,
    allocate_shares,
)
from shared.llm.limiter import DeploymentQuota, QuotaLimiter
from shared.llm.metrics import CountingMetrics, LLMMetrics, NoMetrics
from shared.llm.tokens import estimate_prompt_tokens
from shared.ports import DocumentStore


def build_chat_model(
    settings: Settings,
    *,
    store: DocumentStore | None = None,
    endpoint: ChatEndpoint | None = None,
    metrics: LLMMetrics | None = None,
    clock: Clock | None = None,
) -> GuardedChatModel:
    """The process's ``ChatModel`` from settings; nothing connects until the first call.

    ``LLM_QUOTA_BACKEND`` picks how instances share quota: ``local`` (one instance has it all),
    ``sqlite`` (devhost workers share ``LLM_QUOTA_SQLITE_PATH``) or ``store`` (the ``quota``
    container of ``store``, i.e. Cosmos DB in Azure). The customer budget, when set, is kept in
    the same place (the store when there is one, else the SQLite file).
    """
    llm = settings.llm
    if endpoint is None:
        from shared.adapters.azure.openai_chat import OpenAIChatEndpoint

        endpoint = OpenAIChatEndpoint(llm)
    clock = clock or SystemClock()
    limiter = QuotaLimiter(llm.deployment_tpm)
    shares: ShareCoordinator | None = None
    if llm.quota_backend == "sqlite":
        shares = ShareCoordinator(
            SqliteQuotaLedger(llm.quota_sqlite_path),
            limiter,
            heartbeat_s=llm.quota_heartbeat_s,
            clock=clock,
        )
    elif llm.quota_backend == "store":
        if store is None:
            raise ValueError("LLM_QUOTA_BACKEND=store needs a document store")
        shares = ShareCoordinator(
            StoreQuotaLedger(store, container=settings.quota_container),
            limiter,
            heartbeat_s=llm.quota_heartbeat_s,
            clock=clock,
        )
    budget: CustomerBudget | None = None
    if llm.customer_daily_token_budget is not None:
        limit = llm.customer_daily_token_budget
        budget = (
            StoreCustomerBudget(store, limit=limit, container=settings.quota_container)
            if store is not None and llm.quota_backend != "sqlite"
            else SqliteCustomerBudget(llm.quota_sqlite_path, limit=limit)
        )
    return GuardedChatModel(
        endpoint,
        settings=llm,
        limiter=limiter,
        budget=budget,
        shares=shares,
        clock=clock,
        metrics=metrics,
    )


__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "Breakers",
    "ChatEndpoint",
    "CircuitBreaker",
    "Clock",
    "CountingMetrics",
    "CustomerBudget",
    "DeploymentQuota",
    "EndpointCall",
    "EndpointReply",
    "GuardedChatModel",
    "LLMMetrics",
    "ManualClock",
    "NoMetrics",
    "QuotaLedger",
    "QuotaLimiter",
    "RateLimitInfo",
    "ResponseCache",
    "ShareCoordinator",
    "SqliteCustomerBudget",
    "SqliteQuotaLedger",
    "StoreCustomerBudget",
    "StoreQuotaLedger",
    "SystemClock",
    "allocate_shares",
    "build_chat_model",
    "decide_reschedule",
    "estimate_prompt_tokens",
    "total_budget_reason",
]
