// The landing zone: a storage account with the landing container, and the Event Grid system topic of
// that account. The subscription from the topic to the `landing_events` function is in
// subscriptions.bicep (it can only be created once the function exists; see docs/deploy.md).

@description('Name of the landing storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param storageAccountName string

@description('The landing container (the app setting SIGNALBOX_LANDING_CONTAINER).')
param landingContainer string

@description('Name of the Event Grid system topic of the landing account.')
param systemTopicName string

@description('Resource id of the user-assigned identity the topic dead-letters with.')
param identityId string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    // Entra ID only: Signalbox reads with its managed identity (Storage Blob Data Reader).
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: landingContainer
  properties: {
    publicAccess: 'None'
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output storageAccountName string = account.name
output storageAccountId string = account.id
output containerName string = container.name
output systemTopicName string = systemTopic.name
