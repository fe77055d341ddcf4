metadata description = 'Cosmos DB for NoSQL, serverless, Entra-only (keys off, metadata writes only through ARM), with the Switchboard database and containers and a data-plane role assignment scoped to that database.'

@description('Account name, globally unique.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('Database name: infra/names.json cosmos.database.')
param databaseName string

@description('Containers keyed by role: { name, partitionKey, defaultTtlSeconds? } (infra/names.json cosmos.containers).')
param containers object

@description('Principals given Cosmos DB Built-in Data Contributor on the database.')
param dataContributorPrincipalIds string[] = []

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (networkIsolation in main.bicep).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

// Cosmos DB data-plane roles live under the account, not in Azure RBAC.
var dataContributorRoleId = '00000000-0000-0000-0000-000000000002'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: name
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    // Pay per request: the pipeline's load is bursty and often idle.
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    consistencyPolicy: {
      // Session: a conversation's writer reads its own writes, which the conditional writes rely on.
      defaultConsistencyLevel: 'Session'
    }
    disableLocalAuth: true
    // Databases and containers change only through this template, never from the app.
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: publicNetworkAccess
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

resource sqlContainers 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = [
  for entry in items(containers): {
    parent: database
    name: entry.value.name
    properties: {
      resource: union(
        {
          id: entry.value.name
          partitionKey: {
            paths: [
              entry.value.partitionKey
            ]
            kind: 'Hash'
            version: 2
          }
        },
        // Only containers that declare a TTL get one (quota: daily budget documents expire).
        contains(entry.value, 'defaultTtlSeconds') ? { defaultTtl: entry.value.defaultTtlSeconds } : {}
      )
    }
  }
]

// Role assignments on one account are applied one at a time by the service.
@batchSize(1)
resource dataContributors 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = [
  for principalId in dataContributorPrincipalIds: {
    parent: account
    name: guid(account.id, principalId, dataContributorRoleId)
    properties: {
      roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributorRoleId}'
      principalId: principalId
      scope: '${account.id}/dbs/${databaseName}'
    }
  }
]

@description('Account endpoint, for CosmosConnection__accountEndpoint.')
output endpoint string = account.properties.documentEndpoint

@description('Account name.')
output name string = account.name

@description('Account resource id, for its private endpoint.')
output id string = account.id
