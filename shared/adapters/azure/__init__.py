"""Adapters over Azure services: Cosmos DB, Service Bus, Event Hubs, Blob Storage, Azure OpenAI
and Key Vault. The only modules that import the Azure SDKs or openai."""
