metadata description = 'The user-assigned managed identity the function app runs as: one identity for every data-plane connection, so role assignments can be made before the app exists.'

@description('Name of the user-assigned identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

@description('Resource id, for the app identity and the deployment storage authentication.')
output id string = identity.id

@description('Client id, for the <CONNECTION>__clientId and AZURE_CLIENT_ID settings.')
output clientId string = identity.properties.clientId

@description('Object (principal) id, for role assignments.')
output principalId string = identity.properties.principalId
