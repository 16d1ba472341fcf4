// The Azure ML workspace Signalbox drives (it is not created here): deployed into the workspace's own
// resource group (main.bicep scopes this module there) when a workspace is given.
//
//   AzureML Data Scientist (f6c7c914-8db3-469d-8ca1-694a8f32e121) on the workspace, for Signalbox's
//   identity: the built-in role Microsoft documents for submitting jobs and for the control and data
//   plane of managed online endpoints (create/update endpoints and deployments, traffic, scoring), and
//   it covers the workspace's MLflow registry (models, runs, experiments). It cannot create or delete
//   compute, change or delete the workspace, or list its keys. A custom role could drop the rest of
//   workspaces/* (data, environments, ...), but creating one needs roleDefinitions/write on a
//   subscription, which the resource-group deployment identity does not hold.
//
//   The workspace's Event Grid system topic (Microsoft.MachineLearningServices.Workspaces; Azure allows
//   one per workspace, so an existing one is adopted by giving its name) and, in the second stage
//   (createEventSubscription, once the code is published), its subscription to workspace_events.

@description('Name of the Azure ML workspace (in this module\'s resource group).')
param workspaceName string

@description('Name of Signalbox\'s user-assigned identity.')
param identityName string

@description('Subscription id of the resource group holding the identity.')
param identitySubscriptionId string

@description('Resource group holding the identity.')
param identityResourceGroup string

@description('Name of the workspace\'s Event Grid system topic (an existing one is adopted: one per workspace).')
param systemTopicName string

@description('Name of the subscription to workspace_events (one per environment: workspaces may be shared).')
param eventSubscriptionName string

@description('Create the subscription to workspace_events (true only once the code is published).')
param createEventSubscription bool

@description('Resource id of the Function App (the workspace_events function is under it).')
param functionAppId string

@description('Resource id of the storage account holding the dead-letter container.')
param deadLetterStorageAccountId string

@description('Blob container for events Event Grid could not deliver.')
param deadLetterContainer string

@description('Tags applied to the system topic.')
param tags object

@description('Delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

var roles = {
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
  scope: resourceGroup(identitySubscriptionId, identityResourceGroup)
}

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identity.id, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Dead-letters with Signalbox's identity (Storage Blob Data Owner on the Function App's storage).
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: workspace.location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

// Workspace system topic → workspace_events (functions/ingress.py): new model versions, finished or
// changed runs (the callback that ends a poll early), dataset drift.
resource workspaceEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (createEventSubscription) {
  parent: systemTopic
  name: eventSubscriptionName
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/workspace_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.ModelRegistered'
        'Microsoft.MachineLearningServices.RunCompleted'
        'Microsoft.MachineLearningServices.RunStatusChanged'
        'Microsoft.MachineLearningServices.DatasetDriftDetected'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: identity.id
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
}

output workspaceId string = workspace.id
output systemTopicName string = systemTopic.name
output roleAssignmentId string = dataScientist.id
