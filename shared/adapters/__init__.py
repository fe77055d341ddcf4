"""Adapters: the only modules that import Azure SDKs (or openai), each behind a port.

``sqlite_store`` is the local ``DocumentStore`` devhost and the tests share; ``cosmos_store`` is
the same port on Azure Cosmos DB; ``servicebus_publisher`` implements ``Publisher``;
``eventhub_producer`` sends customer requests to Event Hubs; ``blob_source`` lists, reads and
writes batch documents in Blob Storage (or Azurite). Importing a module connects to nothing: each
adapter makes its client on first use and closes it in ``close()``.
"""
