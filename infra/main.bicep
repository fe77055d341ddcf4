targetScope = 'subscription'

metadata description = 'Switchboard on Azure: a Flex Consumption function app running the four-agent pipeline over Service Bus, Event Hubs ingest, blob batch ingest through Event Grid, Cosmos DB state and Azure OpenAI, every connection through one user-assigned managed identity and no keys. docs/infra.md explains the choices.'

// ---------------------------------------------------------------------------------------------
// Parameters (azd fills the first three from the environment; see main.parameters.json)
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; feeds the resource token and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region for every resource (Flex Consumption must be available there).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person or CI principal running azd. Gets the rights to exercise the deployment (send requests, upload batches). Empty: none.')
param principalId string = ''

@description('Kind of principalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Object id of the identity KEDA authenticates with when hosting on Container Apps or Kubernetes (infra/keda). Empty: none.')
param kedaPrincipalId string = ''

@description('Resource group name; defaults to rg-<environmentName>.')
param resourceGroupName string = ''

@description('Endpoint of an existing Azure OpenAI account (https://<name>.openai.azure.com/) to use instead of creating one. Its deployments must carry the names below, and the app identity needs Cognitive Services OpenAI User on it (docs/infra.md).')
param existingOpenAiEndpoint string = ''

@description('Region of the new Azure OpenAI account, where the models and SKU are offered; defaults to location.')
param openAiLocation string = ''

@description('Deployment SKU of both models.')
@allowed([
  'GlobalStandard'
  'DataZoneStandard'
  'Standard'
])
param openAiDeploymentSku string = 'GlobalStandard'

@description('Deployment of the small model (intent, critic, escalation).')
param openAiSmallDeploymentName string = 'gpt-4o-mini'

@description('Model version of the small deployment.')
param openAiSmallModelVersion string = '2024-07-18'

@description('Capacity of the small deployment, in thousands of tokens per minute.')
@minValue(1)
param openAiSmallCapacity int = 100

@description('Deployment of the large model (response drafting).')
param openAiLargeDeploymentName string = 'gpt-4o'

@description('Model version of the large deployment.')
param openAiLargeModelVersion string = '2024-11-20'

@description('Capacity of the large deployment, in thousands of tokens per minute.')
@minValue(1)
param openAiLargeCapacity int = 30

@description('List prices per million tokens, prompt/completion in USD, keyed by deployment (LLM_PRICES).')
param llmPrices string = 'gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10.00'

@description('Daily token budget per customer; 0 turns the budget off.')
@minValue(0)
param customerDailyTokenBudget int = 0

@description('Give the app identity Azure Service Bus Data Owner on each queue a trigger reads, so Flex Consumption scales every agent on its queue length (Service Bus reveals lengths only with manage rights). Off: receive and send rights only, and scaling falls back to less accurate signals.')
param serviceBusScaleOnQueueLength bool = true

@description('Network isolation: a VNet the function app joins (outbound VNet integration), private endpoints with private DNS zones for Storage, Service Bus, Event Hubs, Cosmos DB, Key Vault and the new Azure OpenAI account, and public network access disabled on each. Service Bus moves to Premium (private endpoints need it). The app\'s inbound endpoint stays public: the HTTP API and Event Grid\'s webhook delivery arrive there.')
param networkIsolation bool = false

@description('Purge protection on the Key Vault (cannot be turned off again).')
param keyVaultPurgeProtection bool = true

// ---------------------------------------------------------------------------------------------
// Shared values: names (infra/names.json), scale limits (scale.json), role ids (infra/roles.json)
// ---------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var names = loadJsonContent('names.json')
var scale = loadJsonContent('../scale.json')
var roles = loadJsonContent('roles.json').azureRoles
var network = loadJsonContent('network.json')

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
// Flex Consumption pulls the package from this container with the app's identity.
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var createOpenAi = empty(existingOpenAiEndpoint)
var hasDeveloper = !empty(principalId)
var hasKeda = !empty(kedaPrincipalId)
// Every service the app reaches follows this: Disabled leaves its private endpoint the only way in.
var publicNetworkAccess = networkIsolation ? 'Disabled' : 'Enabled'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------------
// Identity and monitoring
// ---------------------------------------------------------------------------------------------

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

var app = {
  principalId: identity.outputs.principalId
  principalType: 'ServicePrincipal'
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    roleAssignments: [
      union(app, { roleDefinitionId: roles['Monitoring Metrics Publisher'] })
    ]
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: host storage (AzureWebJobsStorage, deployment package, Event Hubs checkpoints) and
// batch storage (uploads), apart so uploaders never reach the host's keys and leases
// ---------------------------------------------------------------------------------------------

module hostStorage 'modules/storage.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    containers: [
      deploymentContainerName
    ]
    publicNetworkAccess: publicNetworkAccess
    // AzureWebJobsStorage, as "Connecting to host storage with an identity" lists it
    // (https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity);
    // infra/checks/roles.py DOCUMENTED_ROLES holds the same list and the test compares the two.
    roleAssignments: concat(
      [
        // Host only: coordination, the default key store; also the Event Hubs trigger's checkpoints
        // and (Flex Consumption) the deployment package the app pulls with this identity.
        union(app, { roleDefinitionId: roles['Storage Blob Data Owner'] })
        // Azure Blobs (trigger only), "All of" three: the trigger's internal queues and blob
        // receipts live in host storage whatever the trigger's own connection.
        union(app, { roleDefinitionId: roles['Storage Queue Data Contributor'] })
        union(app, { roleDefinitionId: roles['Storage Account Contributor'] })
        // Host diagnostic events are written to table storage.
        union(app, { roleDefinitionId: roles['Storage Table Data Contributor'] })
      ],
      // KEDA reads the Functions checkpoints to compute the unprocessed event count.
      hasKeda
        ? [
            {
              principalId: kedaPrincipalId
              principalType: 'ServicePrincipal'
              roleDefinitionId: roles['Storage Blob Data Reader']
            }
          ]
        : []
    )
  }
}

module batchStorage 'modules/storage.bicep' = {
  name: 'batch-storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}batch${resourceToken}'
    location: location
    tags: tags
    containers: [
      names.storage.batchContainer
      names.storage.eventGridDeadLetterContainer
    ]
    publicNetworkAccess: publicNetworkAccess
    // The blob trigger's connection (BatchStorage): "Storage Blob Data Owner and Storage Queue Data
    // Contributor" (Azure Blobs extension, functions-reference#grant-permission-to-the-identity).
    roleAssignments: concat(
      [
        // Scoped to the container the trigger watches, not the account.
        union(app, { roleDefinitionId: roles['Storage Blob Data Owner'], container: names.storage.batchContainer })
        // Blobs that keep failing are recorded in this account's webjobs-blobtrigger-poison queue,
        // which the trigger creates: account scope.
        union(app, { roleDefinitionId: roles['Storage Queue Data Contributor'] })
      ],
      hasDeveloper
        ? [
            {
              principalId: principalId
              principalType: principalType
              roleDefinitionId: roles['Storage Blob Data Contributor']
            }
          ]
        : []
    )
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    name: '${abbrs.eventGridSystemTopics}${resourceToken}'
    location: location
    tags: tags
    storageAccountName: batchStorage.outputs.name
    deadLetterContainerName: names.storage.eventGridDeadLetterContainer
    deadLetterRoleDefinitionId: roles['Storage Blob Data Contributor']
  }
}

// ---------------------------------------------------------------------------------------------
// Messaging
// ---------------------------------------------------------------------------------------------

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: '${abbrs.serviceBusNamespaces}${resourceToken}'
    location: location
    tags: tags
    queues: names.serviceBus.queues
    // Every final outcome goes to this topic; a subscription per consumer (names.json).
    outcomesTopic: names.serviceBus.topics.outcomes
    skuName: networkIsolation ? 'Premium' : 'Standard'
    publicNetworkAccess: publicNetworkAccess
    // Every stage sends (to the next stage, a rescheduled copy, the deadletter queue): the output
    // binding's Azure Service Bus Data Sender, on the namespace.
    roleAssignments: [
      union(app, { roleDefinitionId: roles['Azure Service Bus Data Sender'] })
    ]
    // The trigger's roles end at the queues a trigger reads (names.json serviceBus.triggeredQueues).
    triggeredQueues: names.serviceBus.triggeredQueues
    queueRoleAssignments: concat(
      [
        // Trigger: Azure Service Bus Data Receiver
        // (https://learn.microsoft.com/azure/azure-functions/functions-bindings-service-bus#identity-based-connections).
        union(app, { roleDefinitionId: roles['Azure Service Bus Data Receiver'] })
      ],
      // Data Owner stays, per queue, because scaling needs it: the documented trigger roles are
      // "Azure Service Bus Data Receiver, Azure Service Bus Data Owner", and the scale decision
      // uses a queue's message count, which Service Bus reveals only with manage rights (Data Owner
      // for an identity); with listen rights alone "scaling isn't as accurate because the queue
      // length can't be used" (https://learn.microsoft.com/azure/azure-functions/event-driven-scaling).
      serviceBusScaleOnQueueLength
        ? [
            union(app, { roleDefinitionId: roles['Azure Service Bus Data Owner'] })
          ]
        : [],
      // The KEDA scaler reads the same queue lengths, for the same reason.
      hasKeda
        ? [
            {
              principalId: kedaPrincipalId
              principalType: 'ServicePrincipal'
              roleDefinitionId: roles['Azure Service Bus Data Owner']
            }
          ]
        : []
    )
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  scope: rg
  params: {
    name: '${abbrs.eventHubNamespaces}${resourceToken}'
    location: location
    tags: tags
    hubName: names.eventHubs.hub
    consumerGroupName: names.eventHubs.consumerGroup
    partitionCount: scale.eventHubPartitions
    publicNetworkAccess: publicNetworkAccess
    roleAssignments: concat(
      [
        // Trigger: Azure Event Hubs Data Receiver; checkpoints are host storage blobs (Blob Data
        // Owner there), so Data Owner on the hub is not needed.
        union(app, { roleDefinitionId: roles['Azure Event Hubs Data Receiver'] })
      ],
      hasKeda
        ? [
            {
              principalId: kedaPrincipalId
              principalType: 'ServicePrincipal'
              roleDefinitionId: roles['Azure Event Hubs Data Receiver']
            }
          ]
        : [],
      hasDeveloper
        ? [
            {
              principalId: principalId
              principalType: principalType
              roleDefinitionId: roles['Azure Event Hubs Data Sender']
            }
          ]
        : []
    )
  }
}

// ---------------------------------------------------------------------------------------------
// State, secrets, models
// ---------------------------------------------------------------------------------------------

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  scope: rg
  params: {
    name: '${abbrs.documentDBDatabaseAccounts}${resourceToken}'
    location: location
    tags: tags
    databaseName: names.cosmos.database
    containers: names.cosmos.containers
    publicNetworkAccess: publicNetworkAccess
    dataContributorPrincipalIds: [
      identity.outputs.principalId
    ]
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultPurgeProtection
    publicNetworkAccess: publicNetworkAccess
    roleAssignments: [
      union(app, { roleDefinitionId: roles['Key Vault Secrets User'] })
    ]
  }
}

module openAi 'modules/openai.bicep' = if (createOpenAi) {
  name: 'openai'
  scope: rg
  params: {
    name: '${abbrs.cognitiveServicesOpenAI}${resourceToken}'
    location: !empty(openAiLocation) ? openAiLocation : location
    tags: tags
    publicNetworkAccess: publicNetworkAccess
    deployments: [
      {
        name: openAiSmallDeploymentName
        model: 'gpt-4o-mini'
        version: openAiSmallModelVersion
        sku: openAiDeploymentSku
        capacity: openAiSmallCapacity
      }
      {
        name: openAiLargeDeploymentName
        model: 'gpt-4o'
        version: openAiLargeModelVersion
        sku: openAiDeploymentSku
        capacity: openAiLargeCapacity
      }
    ]
    roleAssignments: [
      union(app, { roleDefinitionId: roles['Cognitive Services OpenAI User'] })
    ]
  }
}

var openAiEndpoint = createOpenAi ? openAi.outputs.endpoint : existingOpenAiEndpoint

// ---------------------------------------------------------------------------------------------
// Network isolation (networkIsolation): the VNet the app joins, private DNS zones linked to it,
// and private endpoints for every service the app reaches. Address plan and zone names:
// infra/network.json; tests/unit/test_infra_network.py checks every endpoint and zone.
//
// The blob trigger's Event Grid subscription (made by infra/hooks/postdeploy.py) still reaches the
// app: Event Grid push delivery cannot target private endpoints
// (https://learn.microsoft.com/azure/event-grid/consume-private-endpoints), so it posts to the
// app's public webhook, authenticated by the blobs_extension key; the system topic publishes the
// batch account's BlobCreated events whatever that account's network rules, and writes dead
// letters into it as a trusted service with its system-assigned identity.
// ---------------------------------------------------------------------------------------------

module vnet 'modules/network.bicep' = if (networkIsolation) {
  name: 'network'
  scope: rg
  params: {
    name: '${abbrs.networkVirtualNetworks}${resourceToken}'
    location: location
    tags: tags
    addressSpace: network.addressSpace
    appSubnet: network.subnets.app
    privateEndpointSubnet: network.subnets.privateEndpoints
  }
}

module privateDns 'modules/private-dns.bicep' = if (networkIsolation) {
  name: 'private-dns'
  scope: rg
  params: {
    zoneNames: [
      network.privateDnsZones.blob
      network.privateDnsZones.queue
      network.privateDnsZones.table
      network.privateDnsZones.serviceBus
      network.privateDnsZones.cosmosSql
      network.privateDnsZones.keyVault
      network.privateDnsZones.openAi
      network.privateDnsZones.cognitiveServices
    ]
    vnetId: vnet!.outputs.id
    tags: tags
  }
}

// Host storage: blob (host, deployment package, checkpoints, blob receipts), queue (the blob
// trigger's internal queues), table (diagnostic events): the three services AzureWebJobsStorage uses.
module hostStoragePrivateEndpoints 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-host-storage'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}host-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: hostStorage.outputs.id
    groups: [
      {
        groupId: 'blob'
        zones: [
          network.privateDnsZones.blob
        ]
      }
      {
        groupId: 'queue'
        zones: [
          network.privateDnsZones.queue
        ]
      }
      {
        groupId: 'table'
        zones: [
          network.privateDnsZones.table
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

// Batch storage: blob (the uploads the trigger reads) and queue (its poison queue).
module batchStoragePrivateEndpoints 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-batch-storage'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}batch-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: batchStorage.outputs.id
    groups: [
      {
        groupId: 'blob'
        zones: [
          network.privateDnsZones.blob
        ]
      }
      {
        groupId: 'queue'
        zones: [
          network.privateDnsZones.queue
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

module serviceBusPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-servicebus'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}sb-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: serviceBus.outputs.id
    groups: [
      {
        groupId: 'namespace'
        zones: [
          network.privateDnsZones.serviceBus
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

module eventHubsPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-eventhubs'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}evhns-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: eventHubs.outputs.id
    groups: [
      {
        groupId: 'namespace'
        zones: [
          network.privateDnsZones.serviceBus
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

module cosmosPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-cosmos'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}cosmos-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: cosmos.outputs.id
    groups: [
      {
        groupId: 'Sql'
        zones: [
          network.privateDnsZones.cosmosSql
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

module keyVaultPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation) {
  name: 'pe-keyvault'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}kv-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: keyVault.outputs.id
    groups: [
      {
        groupId: 'vault'
        zones: [
          network.privateDnsZones.keyVault
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

// Only for the account this template creates; an existing account's network is its owner's.
module openAiPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation && createOpenAi) {
  name: 'pe-openai'
  scope: rg
  params: {
    name: '${abbrs.networkPrivateEndpoints}oai-${resourceToken}'
    location: location
    tags: tags
    subnetId: vnet!.outputs.privateEndpointSubnetId
    targetResourceId: openAi!.outputs.id
    groups: [
      {
        groupId: 'account'
        zones: [
          network.privateDnsZones.openAi
          network.privateDnsZones.cognitiveServices
        ]
      }
    ]
  }
  dependsOn: [
    privateDns
  ]
}

// ---------------------------------------------------------------------------------------------
// The function app and every setting the code reads (tests/unit/test_infra_consistency.py checks
// this list against shared/config.py, the bindings and local.settings.sample.json)
// ---------------------------------------------------------------------------------------------

var appSettings = {
  // Host storage through the identity.
  AzureWebJobsStorage__accountName: hostStorage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId

  // Connections the bindings name.
  ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identity.outputs.clientId
  EventHubConnection__fullyQualifiedNamespace: eventHubs.outputs.fullyQualifiedNamespace
  EventHubConnection__credential: 'managedidentity'
  EventHubConnection__clientId: identity.outputs.clientId
  BatchStorage__blobServiceUri: batchStorage.outputs.blobEndpoint
  BatchStorage__queueServiceUri: batchStorage.outputs.queueEndpoint
  BatchStorage__credential: 'managedidentity'
  BatchStorage__clientId: identity.outputs.clientId
  CosmosConnection__accountEndpoint: cosmos.outputs.endpoint
  CosmosConnection__credential: 'managedidentity'
  CosmosConnection__clientId: identity.outputs.clientId

  // The identity the SDK clients (DefaultAzureCredential) use.
  AZURE_CLIENT_ID: identity.outputs.clientId

  // Telemetry to Application Insights, authenticated with the identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identity.outputs.clientId}'
  TELEMETRY_EXPORTER: 'azuremonitor'
  OTEL_SERVICE_NAME: 'switchboard'
  // host.json telemetryMode OpenTelemetry: the Python worker configures the Azure Monitor distro
  // and streams its own traces and logs (no duplicate host-level entries); the app adds its
  // redaction to the distro's providers (shared/telemetry/setup.py).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'

  // Names: one place (infra/names.json), read by the code and the binding expressions.
  QUEUE_INTENT: names.serviceBus.queues.intent
  QUEUE_RESPONSE: names.serviceBus.queues.response
  QUEUE_CRITIC: names.serviceBus.queues.critic
  QUEUE_ESCALATION: names.serviceBus.queues.escalation
  QUEUE_DEADLETTER: names.serviceBus.queues.deadletter
  TOPIC_OUTCOMES: names.serviceBus.topics.outcomes.name
  // Per-customer rate at ingress (hub and POST /api/requests): a token bucket in the quota container.
  INGRESS_RATE_PER_MINUTE: '60'
  INGRESS_BURST: '20'
  EVENTHUB_NAME: names.eventHubs.hub
  EVENTHUB_CONSUMER_GROUP: names.eventHubs.consumerGroup
  BATCH_CONTAINER: names.storage.batchContainer
  STORE_BACKEND: 'cosmos'
  COSMOS_DATABASE: names.cosmos.database
  COSMOS_CONTAINER_CONVERSATIONS: names.cosmos.containers.conversations.name
  COSMOS_CONTAINER_BATCHES: names.cosmos.containers.batches.name
  COSMOS_CONTAINER_QUOTA: names.cosmos.containers.quota.name

  // Pipeline.
  MAX_REVISIONS: '2'

  // Models: managed identity against Azure OpenAI (no API key in Azure).
  AZURE_OPENAI_ENDPOINT: openAiEndpoint
  AZURE_OPENAI_API_VERSION: '2024-10-21'
  LLM_DEPLOYMENT: openAiSmallDeploymentName
  LLM_DEPLOYMENT_INTENT: openAiSmallDeploymentName
  LLM_DEPLOYMENT_RESPONSE: openAiLargeDeploymentName
  LLM_DEPLOYMENT_CRITIC: openAiSmallDeploymentName
  LLM_DEPLOYMENT_ESCALATION: openAiSmallDeploymentName
  LLM_FALLBACK_DEPLOYMENTS: ''
  // Drafting falls back to the small model when the large one is throttled or failing.
  LLM_FALLBACK_DEPLOYMENTS_RESPONSE: openAiSmallDeploymentName
  LLM_FALLBACK_DEPLOYMENTS_INTENT: ''
  LLM_FALLBACK_DEPLOYMENTS_CRITIC: ''
  LLM_FALLBACK_DEPLOYMENTS_ESCALATION: ''
  // The quota buckets start from the capacity deployed above: one number, one place.
  LLM_DEPLOYMENT_TPM: '${openAiSmallDeploymentName}=${openAiSmallCapacity * 1000},${openAiLargeDeploymentName}=${openAiLargeCapacity * 1000}'
  LLM_PRICES: llmPrices
  LLM_MAX_TOKENS_INTENT: '200'
  LLM_MAX_TOKENS_RESPONSE: '400'
  LLM_MAX_TOKENS_CRITIC: '250'
  LLM_MAX_TOKENS_ESCALATION: '300'
  // Wait plus timeout stays inside the Service Bus lock (modules/servicebus.bicep lockDuration).
  LLM_TIMEOUT_S: '20'
  LLM_WAIT_BUDGET_S: '10'
  LLM_TOTAL_BUDGET_S: '900'
  LLM_MAX_ATTEMPTS: '3'
  LLM_CACHE_ENABLED: 'true'
  LLM_CACHE_TTL_S: '3600'
  LLM_CACHE_MAX_ENTRIES: '4096'
  LLM_BREAKER_FAILURES: '5'
  LLM_BREAKER_COOLDOWN_S: '15'
  LLM_BREAKER_ERROR_RATE: '0.5'
  LLM_BREAKER_WINDOW_S: '30'
  LLM_BREAKER_MIN_CALLS: '10'
  // Instances share one budget per deployment through the store (Cosmos DB quota container).
  LLM_QUOTA_BACKEND: 'store'
  LLM_QUOTA_HEARTBEAT_S: '5'
  CUSTOMER_DAILY_TOKEN_BUDGET: customerDailyTokenBudget > 0 ? string(customerDailyTokenBudget) : ''
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    deploymentStorageBlobEndpoint: hostStorage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    maximumInstanceCount: scale.maximumInstanceCount
    instanceMemoryMB: scale.instanceMemoryMB
    alwaysReady: scale.alwaysReady
    pythonVersion: '3.11'
    appSettings: appSettings
    virtualNetworkSubnetId: networkIsolation ? vnet!.outputs.appSubnetId : ''
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs: azd stores them in .azure/<env>/.env; the postdeploy hook and infra/keda read them
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = functionApp.outputs.defaultHostName
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.name
output AZURE_SERVICEBUS_FQDN string = serviceBus.outputs.fullyQualifiedNamespace
output AZURE_EVENTHUBS_NAMESPACE string = eventHubs.outputs.name
output AZURE_EVENTHUBS_FQDN string = eventHubs.outputs.fullyQualifiedNamespace
output AZURE_EVENTHUB_NAME string = names.eventHubs.hub
output AZURE_EVENTHUB_CONSUMER_GROUP string = names.eventHubs.consumerGroup
output AZURE_HOST_STORAGE_ACCOUNT_NAME string = hostStorage.outputs.name
output AZURE_BATCH_STORAGE_ACCOUNT_NAME string = batchStorage.outputs.name
output AZURE_BATCH_STORAGE_ACCOUNT_ID string = batchStorage.outputs.id
output AZURE_BATCH_CONTAINER string = names.storage.batchContainer
output AZURE_EVENTGRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output AZURE_COSMOS_ENDPOINT string = cosmos.outputs.endpoint
output AZURE_OPENAI_ENDPOINT string = openAiEndpoint
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URI string = keyVault.outputs.uri
output AZURE_NETWORK_ISOLATION bool = networkIsolation
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
