metadata description = 'A StorageV2 account reachable only with Entra ID (shared keys and anonymous blob access off), its blob containers, and role assignments on it or on one of its containers. Used twice: host storage (AzureWebJobsStorage and the deployment package) and batch storage (the batches container the blob trigger watches). With publicNetworkAccess Disabled only private endpoints (and trusted Azure services) reach it.'

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('Replication SKU.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
])
param skuName string = 'Standard_LRS'

@description('Blob containers to create.')
param containers string[] = []

@description('Role assignments: [{ principalId, roleDefinitionId, principalType, container? }], on the account, or on the named container when container is given.')
param roleAssignments array = []

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (networkIsolation in main.bicep), plus the trusted Azure services the firewall exception lets in.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Days deleted blobs and containers stay recoverable.')
@minValue(1)
@maxValue(365)
param deleteRetentionDays int = 7

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    // No account keys or SAS: every client, the Functions host included, authenticates with Entra ID.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      // Event Grid writes dead letters into the batch account with its system-assigned identity as
      // a trusted Azure service ("Deliver events using private link service", firewall rules:
      // https://learn.microsoft.com/azure/event-grid/consume-private-endpoints).
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for container in containers: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

var accountRoles = filter(roleAssignments, role => !contains(role, 'container'))
var containerRoles = filter(roleAssignments, role => contains(role, 'container'))

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in accountRoles: {
    name: guid(account.id, role.principalId, role.roleDefinitionId)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

resource roleContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [
  for role in containerRoles: {
    parent: blobService
    name: role.container
  }
]

resource containerScopedRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (role, index) in containerRoles: {
    name: guid(roleContainers[index].id, role.principalId, role.roleDefinitionId)
    scope: roleContainers[index]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
    dependsOn: [
      blobContainers
    ]
  }
]

@description('Account name.')
output name string = account.name

@description('Account resource id.')
output id string = account.id

@description('Blob service endpoint, with a trailing slash.')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('Queue service endpoint, with a trailing slash.')
output queueEndpoint string = account.properties.primaryEndpoints.queue
