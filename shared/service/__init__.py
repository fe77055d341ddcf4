"""The use cases: ingest requests and documents, run a stage, answer queries.

Written against the ports (``shared.ports``); never imports an adapter, devhost or the
telemetry set-up. ``shared.bootstrap`` builds it.
"""
