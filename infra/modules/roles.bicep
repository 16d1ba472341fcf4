// Least-privilege role assignments, all for Signalbox's user-assigned managed identity and nothing
// else, each scoped to the one resource it needs:
//
//   Azure Service Bus Data Sender + Data Receiver  the namespace (triggers receive, handlers send;
//                                                  the dead-letter replay peeks/receives/sends)
//   Monitoring Reader                              the namespace (the ops page's queue depths from
//                                                  Azure Monitor metrics: no Data Owner / Manage)
//   Storage Blob Data Owner                        the Function App's storage (host storage,
//                                                  deployment package; Event Grid dead-letters there)
//   Storage Blob Data Reader                       the landing account (read the landed blobs)
//   Key Vault Secrets User                         the vault (Key Vault references)
//   EventGrid Data Sender                          the custom topic (lifecycle events out)
//
//
// AzureML Data Scientist on the Azure ML workspace is in workspace.bicep (the workspace's resource group).
//
// Built-in role definition ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles

@description('Name of the user-assigned managed identity.')
param identityName string

@description('Name of the Service Bus namespace.')
param serviceBusName string

@description('Name of the Function App\'s storage account.')
param functionStorageAccountName string

@description('Name of the landing storage account.')
param landingStorageAccountName string

@description('Name of the key vault.')
param keyVaultName string

@description('Name of the custom Event Grid topic.')
param topicName string

var roles = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  monitoringReader: '43d0d8ad-25c7-4714-9337-8ba259a9fe05'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusName
}

resource functionStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: functionStorageAccountName
}

resource landingStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: landingStorageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

resource serviceBusSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, identity.id, roles.serviceBusDataSender)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource serviceBusReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, identity.id, roles.serviceBusDataReceiver)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource serviceBusMetricsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, identity.id, roles.monitoringReader)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource functionStorageOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(functionStorage.id, identity.id, roles.storageBlobDataOwner)
  scope: functionStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource landingReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(landingStorage.id, identity.id, roles.storageBlobDataReader)
  scope: landingStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, identity.id, roles.eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}
