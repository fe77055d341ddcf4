"""Switchboard's core: messages, agents, routing, ports and adapters.

Nothing in this package imports ``azure.functions``; the Azure-facing triggers live in
``functions/`` and the embedded runtime in ``devhost/``.
"""
