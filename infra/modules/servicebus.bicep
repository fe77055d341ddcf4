metadata description = 'Service Bus (Standard) namespace with Entra-only auth and one queue per pipeline stage plus the replayable dead-letter queue. The queue policy is shared by every queue; docs/infra.md explains each value.'

@description('Namespace name, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the namespace.')
param tags object = {}

@description('Queue names keyed by role (intent, response, critic, escalation, deadletter): infra/names.json serviceBus.queues.')
param queues object

@description('Role assignments on the namespace: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

@description('Service principal given queueOwnerRoleDefinitionId on each queue (not the namespace). Reading a queue length takes manage rights, and the Functions scale controller scales on queue length only with them. Empty: none.')
param queueOwnerPrincipalId string = ''

@description('Role definition id for queueOwnerPrincipalId: Azure Service Bus Data Owner.')
param queueOwnerRoleDefinitionId string = ''

// The queue policy is scale.json's "queues" block, the numbers devhost's broker uses too.
var queuePolicy = loadJsonContent('../../scale.json').queues
// Longer than the LLM call timeout (LLM_TIMEOUT_S) so a lock never lapses during one call; the
// Functions host renews it up to host.json maxAutoLockRenewalDuration for longer invocations.
var lockDuration = 'PT${queuePolicy.lockDurationSeconds}S'
// Ten deliveries absorb transient failures (throttling, lost locks, restarts) before a message
// that keeps crashing its handler goes to the queue's dead-letter sub-queue.
var maxDeliveryCount = queuePolicy.maxDeliveryCount
// Every hop sends under a deterministic message id, so within this window Service Bus drops the
// second copy a redelivered stage sends (a rescheduled attempt carries an id of its own).
var duplicateDetectionWindow = 'PT${queuePolicy.duplicateDetectionWindowSeconds}S'
// Messages nobody processed within two weeks are dead-lettered, not dropped.
var messageTimeToLive = 'P14D'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    // Standard: duplicate detection and 256 KB messages; Basic has neither.
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [
  for entry in items(queues): {
    parent: namespace
    name: entry.value
    properties: {
      lockDuration: lockDuration
      maxDeliveryCount: maxDeliveryCount
      requiresDuplicateDetection: true
      duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
      deadLetteringOnMessageExpiration: true
      defaultMessageTimeToLive: messageTimeToLive
      enableBatchedOperations: true
      maxSizeInMegabytes: 1024
    }
  }
]

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roleAssignments: {
    name: guid(namespace.id, role.principalId, role.roleDefinitionId)
    scope: namespace
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

resource queueOwners 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for index in range(0, length(items(queues))): if (!empty(queueOwnerPrincipalId)) {
    name: guid(queue[index].id, queueOwnerPrincipalId, queueOwnerRoleDefinitionId)
    scope: queue[index]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueOwnerRoleDefinitionId)
      principalId: queueOwnerPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

@description('Namespace name (KEDA scalers take the name, not the FQDN).')
output name string = namespace.name

@description('Fully qualified namespace, for ServiceBusConnection__fullyQualifiedNamespace.')
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
