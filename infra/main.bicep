// Signalbox: the whole app in one resource group.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/parameters/<env>.parameters.json
//
// Function App (Flex Consumption, Python 3.11) with its storage; Service Bus (Standard) with the
// queues of shared/queues.json; the landing storage account with its Event Grid system topic; a
// custom Event Grid topic for drift alerts and lifecycle events; Key Vault for the webhook secrets;
// Application Insights with Log Analytics; one user-assigned managed identity with least-privilege
// roles. The Event Grid subscriptions to the functions come with createEventSubscriptions=true, once
// the code is published (docs/deploy.md explains the order).

targetScope = 'resourceGroup'

@description('Environment name: SIGNALBOX_ENVIRONMENT and the suffix of every resource name.')
@allowed([
  'dev'
  'staging'
  'prod'
])
param environmentName string

@description('Azure region of every resource (one that offers Flex Consumption).')
param location string = resourceGroup().location

@description('Prefix of the resource names (lowercase letters, digits and dashes).')
@minLength(3)
@maxLength(12)
param baseName string = 'signalbox'

@description('Name of the Function App; empty for func-<baseName>-<environment>-<unique suffix>.')
param functionAppName string = ''

@description('Extra tags for every resource.')
param tags object = {}

@description('The landing container: the Event Grid filter and the app setting SIGNALBOX_LANDING_CONTAINER.')
@minLength(3)
@maxLength(63)
param landingContainer string = 'landing'

@description('Blob container (Function App storage) for events Event Grid could not deliver.')
param deadLetterContainer string = 'eventgrid-deadletter'

@description('Create the Event Grid subscriptions to the functions (true only once the code is published).')
param createEventSubscriptions bool = false

@description('Flex Consumption: maximum number of instances (40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Flex Consumption: memory per instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Key Vault purge protection (irreversible once on).')
param keyVaultPurgeProtection bool = true

@description('Days Log Analytics keeps the logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('SIGNALBOX_CATALOGUE: the model catalogue inside the deployed package.')
param catalogueFile string = '/home/site/wwwroot/catalogue.toml'

@description('SIGNALBOX_SERVING: databricks (Model Serving) or azureml (managed online endpoints).')
@allowed([
  'databricks'
  'azureml'
])
param servingBackend string = 'azureml'

@description('SIGNALBOX_REGISTRY: mlflow (MLFLOW_TRACKING_URI) or azureml (the workspace\'s MLflow).')
@allowed([
  'mlflow'
  'azureml'
])
param registryBackend string = 'azureml'

@description('MLFLOW_TRACKING_URI, e.g. databricks; empty with the azureml registry.')
param mlflowTrackingUri string = ''

@description('MLFLOW_REGISTRY_URI, e.g. databricks-uc; empty to use the tracking URI.')
param mlflowRegistryUri string = ''

@description('DATABRICKS_HOST: https://adb-<workspace id>.<n>.azuredatabricks.net, or empty.')
param databricksHost string = ''

@description('Name of a Key Vault secret holding a Databricks token; empty to sign in with the managed identity.')
param databricksTokenSecretName string = ''

@description('AZUREML_SUBSCRIPTION_ID; empty: this subscription (when a workspace is given).')
param azuremlSubscriptionId string = ''

@description('AZUREML_RESOURCE_GROUP; empty: this resource group (when a workspace is given).')
param azuremlResourceGroup string = ''

@description('AZUREML_WORKSPACE: the Azure ML workspace, or empty.')
param azuremlWorkspace string = ''

@description('The Azure ML workspace\'s Event Grid system topic (one per workspace: give an existing one\'s name); empty: evgs-<baseName>-aml-<environment>.')
param azuremlSystemTopicName string = ''

@description('SIGNALBOX_AZUREML_INSTANCE_TYPE of managed online deployments.')
param azuremlInstanceType string = 'Standard_DS3_v2'

@description('SIGNALBOX_GITHUB_BRANCHES: the branch=environment pairs this environment retrains for.')
param githubBranches string = 'main=staging,release=prod'

@description('SIGNALBOX_GITHUB_PATHS: repository path globs whose change retrains.')
param githubPaths string = 'src/**,jobs/**'

@description('SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS: accepted clock skew of signed webhooks.')
@minValue(1)
param webhookToleranceSeconds int = 300

@description('SIGNALBOX_RETRY_MAX_ATTEMPTS: transient failures retried by scheduled re-send before dead-lettering.')
@minValue(0)
param retryMaxAttempts int = 10

@description('SIGNALBOX_RETRY_INITIAL_SECONDS (a number, as a string).')
param retryInitialSeconds string = '5'

@description('SIGNALBOX_RETRY_MAX_SECONDS (a number, as a string).')
param retryMaxSeconds string = '600'

@description('SIGNALBOX_POLL_INITIAL_SECONDS (a number, as a string).')
param pollInitialSeconds string = '2'

@description('SIGNALBOX_POLL_MAX_SECONDS (a number, as a string).')
param pollMaxSeconds string = '300'

@description('SIGNALBOX_POLL_MAX_ATTEMPTS.')
@minValue(1)
param pollMaxAttempts int = 200

@description('SIGNALBOX_RECONCILE_SCHEDULE: NCRONTAB (6 fields) of the reconciliation sweep timer.')
param reconcileSchedule string = '0 */5 * * * *'

@description('SIGNALBOX_RECONCILE_GRACE_SECONDS: how old an unannounced version must be before the sweep evaluates it (a number, as a string).')
param reconcileGraceSeconds string = '120'

@description('SIGNALBOX_CODE_COMMIT: commit SHA of the deployed code (the deploy workflow passes github.sha).')
param codeCommit string = ''

@description('SIGNALBOX_CODE_REPOSITORY: owner/name of the repository (the deploy workflow passes it).')
param codeRepository string = ''

// The queue definitions the code reads (shared/queues.py): one source for code, local queues and Azure.
var queueDefinitions = loadJsonContent('../shared/queues.json').queues

var suffix = uniqueString(subscription().id, resourceGroup().id, environmentName)
var compactName = toLower(replace(baseName, '-', ''))
var names = {
  identity: 'id-${baseName}-${environmentName}'
  logAnalytics: 'log-${baseName}-${environmentName}'
  appInsights: 'appi-${baseName}-${environmentName}'
  serviceBus: 'sb-${baseName}-${environmentName}-${suffix}'
  keyVault: take('kv${compactName}${environmentName}${suffix}', 24)
  plan: 'plan-${baseName}-${environmentName}'
  functionApp: empty(functionAppName) ? 'func-${baseName}-${environmentName}-${suffix}' : functionAppName
  functionStorage: take('st${compactName}${suffix}', 24)
  landingStorage: take('stland${compactName}${suffix}', 24)
  landingTopic: 'evgs-${baseName}-landing-${environmentName}'
  topic: 'evgt-${baseName}-${environmentName}-${suffix}'
}
// Where the Azure ML workspace lives (this subscription / resource group unless given).
var azuremlScope = {
  subscriptionId: empty(azuremlSubscriptionId) ? subscription().subscriptionId : azuremlSubscriptionId
  resourceGroup: empty(azuremlResourceGroup) ? resourceGroup().name : azuremlResourceGroup
}
var allTags = union(tags, {
  application: 'signalbox'
  environment: environmentName
})

// Key Vault secret names of the webhook secrets (values: created by the operator, never here).
var webhookSecretNames = {
  mlflow: 'signalbox-mlflow-webhook-secret'
  github: 'signalbox-github-webhook-secret'
  databricks: 'signalbox-databricks-webhook-secret'
}

module identity 'modules/identity.bicep' = {
  name: 'signalbox-identity'
  params: {
    name: names.identity
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'signalbox-monitoring'
  params: {
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    location: location
    tags: allTags
    retentionInDays: logRetentionInDays
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'signalbox-servicebus'
  params: {
    name: names.serviceBus
    location: location
    tags: allTags
    queues: queueDefinitions
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'signalbox-keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: allTags
    enablePurgeProtection: keyVaultPurgeProtection
  }
}

module landing 'modules/landing.bicep' = {
  name: 'signalbox-landing'
  params: {
    storageAccountName: names.landingStorage
    landingContainer: landingContainer
    systemTopicName: names.landingTopic
    identityId: identity.outputs.id
    location: location
    tags: allTags
  }
}

module topic 'modules/topic.bicep' = {
  name: 'signalbox-topic'
  params: {
    name: names.topic
    identityId: identity.outputs.id
    location: location
    tags: allTags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'signalbox-functionapp'
  params: {
    name: names.functionApp
    planName: names.plan
    storageAccountName: names.functionStorage
    deadLetterContainer: deadLetterContainer
    location: location
    tags: allTags
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    appInsightsName: monitoring.outputs.appInsightsName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    serviceBusResourceId: serviceBus.outputs.id
    eventGridEndpoint: topic.outputs.endpoint
    keyVaultUri: keyVault.outputs.vaultUri
    webhookSecretNames: webhookSecretNames
    environmentName: environmentName
    landingContainer: landingContainer
    landingAccountUrl: 'https://${landing.outputs.storageAccountName}.blob.${environment().suffixes.storage}'
    catalogueFile: catalogueFile
    servingBackend: servingBackend
    registryBackend: registryBackend
    mlflowTrackingUri: mlflowTrackingUri
    mlflowRegistryUri: mlflowRegistryUri
    databricksHost: databricksHost
    databricksTokenSecretName: databricksTokenSecretName
    azuremlSubscriptionId: (empty(azuremlWorkspace) || !empty(azuremlSubscriptionId)) ? azuremlSubscriptionId : subscription().subscriptionId
    azuremlResourceGroup: (empty(azuremlWorkspace) || !empty(azuremlResourceGroup)) ? azuremlResourceGroup : resourceGroup().name
    azuremlWorkspace: azuremlWorkspace
    azuremlInstanceType: azuremlInstanceType
    githubBranches: githubBranches
    githubPaths: githubPaths
    webhookToleranceSeconds: webhookToleranceSeconds
    pollInitialSeconds: pollInitialSeconds
    pollMaxSeconds: pollMaxSeconds
    retryMaxAttempts: retryMaxAttempts
    retryInitialSeconds: retryInitialSeconds
    retryMaxSeconds: retryMaxSeconds
    pollMaxAttempts: pollMaxAttempts
    reconcileSchedule: reconcileSchedule
    reconcileGraceSeconds: reconcileGraceSeconds
    codeCommit: codeCommit
    codeRepository: codeRepository
  }
}

module roles 'modules/roles.bicep' = {
  name: 'signalbox-roles'
  params: {
    identityName: identity.outputs.name
    serviceBusName: serviceBus.outputs.name
    functionStorageAccountName: functionApp.outputs.storageAccountName
    landingStorageAccountName: landing.outputs.storageAccountName
    keyVaultName: keyVault.outputs.name
    topicName: topic.outputs.name
  }
}

// The Azure ML workspace, in its own resource group: AzureML Data Scientist for the identity, its system
// topic, and (second stage) the subscription to workspace_events.
module workspace 'modules/workspace.bicep' = if (!empty(azuremlWorkspace)) {
  name: 'signalbox-workspace-${environmentName}'
  scope: resourceGroup(azuremlScope.subscriptionId, azuremlScope.resourceGroup)
  params: {
    workspaceName: azuremlWorkspace
    identityName: identity.outputs.name
    identitySubscriptionId: subscription().subscriptionId
    identityResourceGroup: resourceGroup().name
    systemTopicName: empty(azuremlSystemTopicName) ? 'evgs-${baseName}-aml-${environmentName}' : azuremlSystemTopicName
    eventSubscriptionName: 'workspace-events-${environmentName}'
    createEventSubscription: createEventSubscriptions
    functionAppId: functionApp.outputs.id
    deadLetterStorageAccountId: functionApp.outputs.storageAccountId
    deadLetterContainer: functionApp.outputs.deadLetterContainer
    tags: allTags
  }
  dependsOn: [
    roles
  ]
}

// Second stage: needs the published functions (and the dead-letter role on the Function App storage).
module subscriptions 'modules/subscriptions.bicep' = if (createEventSubscriptions) {
  name: 'signalbox-event-subscriptions'
  params: {
    functionAppName: functionApp.outputs.name
    landingSystemTopicName: landing.outputs.systemTopicName
    landingContainer: landingContainer
    topicName: topic.outputs.name
    identityId: identity.outputs.id
    deadLetterStorageAccountName: functionApp.outputs.storageAccountName
    deadLetterContainer: functionApp.outputs.deadLetterContainer
  }
  dependsOn: [
    roles
  ]
}

output functionAppName string = functionApp.outputs.name
output functionAppUrl string = 'https://${functionApp.outputs.defaultHostName}'
output keyVaultName string = keyVault.outputs.name
output webhookSecretNames object = webhookSecretNames
output landingStorageAccountName string = landing.outputs.storageAccountName
output landingContainer string = landing.outputs.containerName
output customTopicEndpoint string = topic.outputs.endpoint
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output queueNames array = serviceBus.outputs.queueNames
output identityClientId string = identity.outputs.clientId
output identityPrincipalId string = identity.outputs.principalId
output eventSubscriptionsCreated bool = createEventSubscriptions
output azuremlSystemTopicName string = empty(azuremlWorkspace) ? '' : workspace.outputs.systemTopicName
