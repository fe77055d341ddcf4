"""Switchboard's core, in layers: domain, service, agents, llm, adapters and telemetry, with one
composition root (``bootstrap``); docs/architecture.md draws them.

Nothing in this package imports ``azure.functions``; the Azure-facing triggers live in
``functions/`` and the embedded runtime in ``devhost/``.
"""
