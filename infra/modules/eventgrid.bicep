metadata description = 'Event Grid system topic on the batch storage account. Its event subscription (BlobCreated on the batches container, delivered to the blob extension webhook) is created after code deployment by infra/hooks/postdeploy.py, because the webhook key exists only once the function runs. The topic identity may write dead-lettered events into one container.'

@description('System topic name.')
param name string

@description('Azure region (the storage account region).')
param location string

@description('Tags applied to the topic.')
param tags object = {}

@description('Storage account whose blob events the topic publishes.')
param storageAccountName string

@description('Container that receives events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Role definition id that lets the topic identity write dead letters.')
param deadLetterRoleDefinitionId string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource deadLetterContainer 'containers' existing = {
      name: deadLetterContainerName
    }
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobService::deadLetterContainer.id, topic.id, deadLetterRoleDefinitionId)
  scope: storage::blobService::deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', deadLetterRoleDefinitionId)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

@description('System topic name, for the postdeploy hook.')
output name string = topic.name
