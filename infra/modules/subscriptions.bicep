// Event Grid subscriptions to the Function App's Event Grid triggers, with the AzureFunction endpoint
// type (Event Grid calls the function with the app's system key: no key in any template).
//
// Azure checks, when it creates such a subscription, that the function exists: this module runs
// only once the code is published (main.bicep parameter createEventSubscriptions; see
// docs/deploy.md, "Order of a first deployment").

@description('Name of the Function App.')
param functionAppName string

@description('Name of the landing account\'s Event Grid system topic.')
param landingSystemTopicName string

@description('The landing container: only blobs created in it reach landing_events.')
param landingContainer string

@description('Name of the custom topic (drift alerts and lifecycle events).')
param topicName string

@description('Resource id of the user-assigned identity the topics dead-letter with.')
param identityId string

@description('Name of the storage account holding the dead-letter container.')
param deadLetterStorageAccountName string

@description('Blob container for events Event Grid could not deliver.')
param deadLetterContainer string

@description('Delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource landingTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: landingSystemTopicName
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

resource deadLetterStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: deadLetterStorageAccountName
}

// Storage system topic of the landing account → landing_events (functions/ingress.py).
resource landingEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: landingTopic
  name: 'landing-events'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/landing_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${landingContainer}/'
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: identityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorage.id
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
}

// Custom topic → alert_events (functions/ingress.py): only the drift alert; Signalbox's own
// lifecycle events on the same topic are for other subscribers.
resource driftAlerts 'Microsoft.EventGrid/topics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'drift-alerts'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/alert_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'CloudEventSchemaV1_0'
    filter: {
      includedEventTypes: [
        'io.signalbox.drift.detected'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: identityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorage.id
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
}

output landingSubscriptionName string = landingEvents.name
output driftSubscriptionName string = driftAlerts.name
