metadata description = 'Flex Consumption (FC1) plan and the Python function app: user-assigned identity, deployment package pulled from blob storage with that identity, scale limits from scale.json, optional VNet integration, basic-auth publishing off, and the app settings composed in main.bicep.'

@description('Function app name, globally unique.')
param name string

@description('Plan name.')
param planName string

@description('Azure region with Flex Consumption.')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('azd service name (azure.yaml services key); azd finds the app by this tag.')
param serviceName string

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Blob endpoint of the host storage account, with a trailing slash.')
param deploymentStorageBlobEndpoint string

@description('Container holding the deployment package.')
param deploymentContainerName string

@description('Scale-out ceiling: scale.json maximumInstanceCount.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Memory per instance: scale.json instanceMemoryMB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Always-ready instances: scale.json alwaysReady, [{ name, instanceCount }], a name being a trigger group (http, blob, durable) or function:<name>. Empty: scale to zero (https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#always-ready-instances).')
param alwaysReady array = []

@description('Python version of the worker.')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string

@description('Application settings, composed in main.bicep (identity-based connections, names, tuning).')
param appSettings object

@description('Subnet (delegated to Microsoft.App/environments) the app\'s outbound traffic enters the VNet through; empty: no VNet integration.')
param virtualNetworkSubnetId string = ''

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Outbound VNet integration (networkIsolation): the services' names resolve through the linked
    // private DNS zones to private endpoint addresses, which are RFC 1918 and so always routed into
    // the VNet (https://learn.microsoft.com/azure/azure-functions/functions-networking-options).
    // Inbound stays public: the HTTP API and the Event Grid webhook of the blob trigger arrive there.
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    // Key Vault references in app settings resolve with the app's (only) identity.
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${deploymentStorageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      // Per-instance concurrency is host.json's (serviceBus.maxConcurrentCalls,
      // eventHubs.maxEventBatchSize); the instance ceiling, size and always-ready instances are
      // set here. Always-ready instances are billed while idle; none by default.
      scaleAndConcurrency: {
        alwaysReady: alwaysReady
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

// No publishing passwords: azd and CI deploy with Entra ID tokens.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

@description('Function app name.')
output name string = site.name

@description('Default host name; the blob extension webhook lives under it.')
output defaultHostName string = site.properties.defaultHostName
