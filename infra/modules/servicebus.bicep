// Service Bus (Standard) and Signalbox's queues. The queues are not written here: main.bicep loads
// them from shared/queues.json (the definition the code reads too) and passes them in, so the
// lock duration, MaxDeliveryCount, duplicate detection window, TTL and sessions cannot drift
// between the code, the local queues and Azure.
//
// Note: Service Bus cannot change requiresSession or requiresDuplicateDetection on an existing
// queue; changing those in queues.json means deleting the queue first (see docs/deploy.md).

@description('Name of the Service Bus namespace.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the namespace.')
param tags object

@description('The queues of shared/queues.json (its "queues" array).')
param queues array

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    // Managed identity only: no SAS keys, so no connection string exists to leak.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = [for q in queues: {
  parent: namespace
  name: q.name
  properties: {
    requiresSession: q.requiresSession
    // Every command carries a message_id derived from its cause: a redelivered or duplicated event is
    // dropped by duplicate detection within the queue's window.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: q.duplicateDetectionHistoryTimeWindow
    maxDeliveryCount: q.maxDeliveryCount
    lockDuration: q.lockDuration
    defaultMessageTimeToLive: q.defaultMessageTimeToLive
    deadLetteringOnMessageExpiration: q.deadLetteringOnMessageExpiration
  }
}]

output name string = namespace.name
output id string = namespace.id
// e.g. sb-signalbox-dev-abc.servicebus.windows.net (the endpoint is https://<fqdn>:443/).
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
output queueNames array = [for q in queues: q.name]
