metadata description = 'Event Hubs (Standard) namespace with Entra-only auth, the ingest hub and the consumer group the ingest function reads with.'

@description('Namespace name, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the namespace.')
param tags object = {}

@description('Hub producers send requests to: infra/names.json eventHubs.hub.')
param hubName string

@description('Consumer group of the ingest function: infra/names.json eventHubs.consumerGroup.')
param consumerGroupName string

@description('Partitions of the hub: scale.json eventHubPartitions (it also caps the ingest scale-out).')
@minValue(1)
@maxValue(32)
param partitionCount int

@description('Days events stay readable (Standard allows up to 7).')
@minValue(1)
@maxValue(7)
param retentionInDays int = 3

@description('Throughput units to start with.')
@minValue(1)
@maxValue(40)
param throughputUnits int = 1

@description('Ceiling for auto-inflate.')
@minValue(1)
@maxValue(40)
param maximumThroughputUnits int = 4

@description('Role assignments on the hub: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (networkIsolation in main.bicep).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    // Standard: named consumer groups (Basic only has $Default) and auto-inflate.
    name: 'Standard'
    tier: 'Standard'
    capacity: throughputUnits
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    // Private endpoints need Standard or above (https://learn.microsoft.com/azure/event-hubs/private-link-service).
    publicNetworkAccess: publicNetworkAccess
    isAutoInflateEnabled: true
    maximumThroughputUnits: maximumThroughputUnits
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: hubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionInDays
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
  properties: {}
}

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roleAssignments: {
    name: guid(hub.id, role.principalId, role.roleDefinitionId)
    scope: hub
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

@description('Namespace name (the KEDA scaler takes the name, not the FQDN).')
output name string = namespace.name

@description('Fully qualified namespace, for EventHubConnection__fullyQualifiedNamespace.')
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]

@description('Namespace resource id, for its private endpoint.')
output id string = namespace.id
