metadata description = 'Key Vault in RBAC mode for secrets the app references as @Microsoft.KeyVault(SecretUri=...) app settings. Switchboard itself needs no secret in Azure; the vault is where an operator puts one (docs/infra.md shows the pattern).'

@description('Vault name: 3-24 characters, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Purge protection: once on it cannot be turned off, and a deleted vault keeps its name for the retention period.')
param enablePurgeProtection bool = true

@description('Days a deleted vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Role assignments on the vault: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

@description('Enabled: reachable from public networks (with Entra ID). Disabled: only through private endpoints (networkIsolation in main.bicep).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The API accepts true or absent, never false.
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'
    }
  }
}

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roleAssignments: {
    name: guid(vault.id, role.principalId, role.roleDefinitionId)
    scope: vault
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

@description('Vault name.')
output name string = vault.name

@description('Vault URI, the base of every SecretUri reference.')
output uri string = vault.properties.vaultUri

@description('Vault resource id, for its private endpoint.')
output id string = vault.id
