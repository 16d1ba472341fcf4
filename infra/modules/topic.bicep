// Signalbox's custom Event Grid topic: drift monitors publish `io.signalbox.drift.detected` here
// (CloudEvents 1.0), and Signalbox publishes its lifecycle events here (SIGNALBOX_EVENTS=eventgrid)
// with its managed identity (EventGrid Data Sender). No access keys: local auth is off.

@description('Name of the custom topic.')
param name string

@description('Resource id of the user-assigned identity the topic dead-letters with.')
param identityId string

@description('Azure region.')
param location string

@description('Tags applied to the topic.')
param tags object

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
output id string = topic.id
output endpoint string = topic.properties.endpoint
