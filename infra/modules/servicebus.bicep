metadata description = 'Service Bus namespace (Standard; Premium when private) with Entra-only auth and one queue per pipeline stage plus the replayable dead-letter queue, the outcomes topic with its filtered subscriptions, role assignments on the namespace and on the queues a trigger reads. The queue policy is shared by every queue; docs/infra.md explains each value.'

@description('Namespace name, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the namespace.')
param tags object = {}

@description('Queue names keyed by role (intent, response, critic, escalation, deadletter): infra/names.json serviceBus.queues.')
param queues object

@description('The outcomes topic: { name, subscriptions: { <name>: <correlation filter properties> or null for every message } }: infra/names.json serviceBus.topics.outcomes.')
param outcomesTopic object

@description('Role assignments on the namespace: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

@description('Keys of the queues (in queues) that a Service Bus trigger reads: infra/names.json serviceBus.triggeredQueues.')
param triggeredQueues string[] = []

@description('Role assignments made on each triggered queue rather than the namespace: [{ principalId, roleDefinitionId, principalType }].')
param queueRoleAssignments array = []

@description('Standard, or Premium (private endpoints and disabling public access need Premium: https://learn.microsoft.com/azure/service-bus-messaging/private-link-service).')
@allowed([
  'Standard'
  'Premium'
])
param skuName string = 'Standard'

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (Premium only).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

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
    // Standard: duplicate detection and 256 KB messages; Basic has neither. Premium (one messaging
    // unit) when the namespace must be private.
    name: skuName
    tier: skuName
    capacity: skuName == 'Premium' ? 1 : null
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: publicNetworkAccess
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

// The outcomes topic: every final outcome is one message here; consumers (channel delivery, team
// notifications, analytics) each read their own subscription. Its policy is scale.json's "topics".
var topicPolicy = loadJsonContent('../../scale.json').topics
var outcomeSubscriptions = items(outcomesTopic.subscriptions)

resource topic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: outcomesTopic.name
  properties: {
    // Outcome messages carry deterministic ids (conversation, turn, outcome): a stage that sends
    // again after a crash is dropped here rather than delivered twice.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT${topicPolicy.duplicateDetectionWindowSeconds}S'
    defaultMessageTimeToLive: messageTimeToLive
    enableBatchedOperations: true
    maxSizeInMegabytes: 1024
  }
}

resource subscription 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [
  for entry in outcomeSubscriptions: {
    parent: topic
    name: entry.key
    properties: {
      lockDuration: 'PT${topicPolicy.subscriptionLockDurationSeconds}S'
      maxDeliveryCount: topicPolicy.subscriptionMaxDeliveryCount
      deadLetteringOnMessageExpiration: true
      defaultMessageTimeToLive: messageTimeToLive
      enableBatchedOperations: true
    }
  }
]

// A subscription with a filter gets it as its $Default rule (replacing the true filter); one
// whose filter is null keeps $Default's true filter and sees every message.
resource rule 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [
  for (entry, i) in outcomeSubscriptions: if (entry.value != null) {
    parent: subscription[i]
    name: '$Default'
    properties: {
      filterType: 'CorrelationFilter'
      correlationFilter: {
        properties: entry.value
      }
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

// One assignment per (triggered queue, role): the trigger's rights end at the queues it reads.
// Assignment i gives role i % roleCount on triggered queue i / roleCount.
var triggeredIndexes = filter(range(0, length(items(queues))), index => contains(triggeredQueues, items(queues)[index].key))
var roleCount = length(queueRoleAssignments)

resource queueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, length(triggeredIndexes) * roleCount): {
    name: guid(
      queue[triggeredIndexes[i / roleCount]].id,
      queueRoleAssignments[i % roleCount].principalId,
      queueRoleAssignments[i % roleCount].roleDefinitionId
    )
    scope: queue[triggeredIndexes[i / roleCount]]
    properties: {
      roleDefinitionId: subscriptionResourceId(
        'Microsoft.Authorization/roleDefinitions',
        queueRoleAssignments[i % roleCount].roleDefinitionId
      )
      principalId: queueRoleAssignments[i % roleCount].principalId
      principalType: queueRoleAssignments[i % roleCount].principalType
    }
  }
]

@description('Namespace resource id, for its private endpoint.')
output id string = namespace.id

@description('Namespace name (KEDA scalers take the name, not the FQDN).')
output name string = namespace.name

@description('The outcomes topic name.')
output outcomesTopicName string = topic.name

@description('Fully qualified namespace, for ServiceBusConnection__fullyQualifiedNamespace.')
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
