metadata description = 'Azure OpenAI account with Entra-only auth (a custom subdomain is what makes token auth possible) and the chat model deployments the agents call.'

@description('Account name; also the custom subdomain, so globally unique.')
param name string

@description('Azure region with the models and SKU below.')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('Model deployments: [{ name, model, version, sku, capacity }] with capacity in thousands of tokens per minute.')
param deployments array

@description('Role assignments on the account: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (networkIsolation in main.bicep).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  sku: {
    name: 'S0'
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'
    }
  }
}

// One deployment at a time: the service rejects concurrent deployment changes on one account.
@batchSize(1)
resource modelDeployments 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = [
  for deployment in deployments: {
    parent: account
    name: deployment.name
    sku: {
      name: deployment.sku
      capacity: deployment.capacity
    }
    properties: {
      model: {
        format: 'OpenAI'
        name: deployment.model
        version: deployment.version
      }
      versionUpgradeOption: 'OnceCurrentVersionExpired'
    }
  }
]

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roleAssignments: {
    name: guid(account.id, role.principalId, role.roleDefinitionId)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

@description('Endpoint, for AZURE_OPENAI_ENDPOINT.')
output endpoint string = account.properties.endpoint

@description('Account resource id, for its private endpoint.')
output id string = account.id
