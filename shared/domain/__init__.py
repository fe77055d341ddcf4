"""The domain: the request contract, messages, the conversation aggregate, routing, results.

Pure: it imports nothing of the application but ``shared.errors`` and ``shared.ports``' value
types, does no I/O, and knows no transport, store or model.
"""
