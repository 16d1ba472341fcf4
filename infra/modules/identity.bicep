// The one user-assigned managed identity Signalbox runs as. The Function App, its Key Vault
// references and its identity-based connections (Service Bus, storage, Event Grid) use it, and the
// Event Grid topics use it to write undeliverable events to the dead-letter container.
// Its role assignments are all in roles.bicep.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
