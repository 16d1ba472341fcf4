// The Function App on the Flex Consumption plan (Linux, Python 3.11), its own storage account (host
// storage, the deployment package container, and the Event Grid dead-letter container) and its app
// settings: every setting Signalbox reads (shared/settings.py, local.settings.sample.json) plus the
// identity-based connections. Flex Consumption sets the runtime from functionAppConfig: no
// FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION app settings.
//
// The app settings resource replaces the whole set on every deployment: a setting changed by hand
// in the portal is reset by the next deployment. Change it here (or in the parameters file).

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the Function App\'s own storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param storageAccountName string

@description('Blob container of the deployment package (Flex Consumption "one deploy").')
param deploymentContainer string = 'app-package'

@description('Blob container where Event Grid puts events it could not deliver.')
param deadLetterContainer string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Maximum number of instances (Flex Consumption: 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of that identity (identity-based connections, DefaultAzureCredential).')
param identityClientId string

@description('Name of the Application Insights component.')
param appInsightsName string

@description('Service Bus namespace host name, e.g. sb-signalbox-dev-x.servicebus.windows.net.')
param serviceBusFullyQualifiedNamespace string

@description('ARM id of the Service Bus namespace: the ops page reads queue depths from its Azure Monitor metrics.')
param serviceBusResourceId string

@description('Endpoint of the custom Event Grid topic (lifecycle events out).')
param eventGridEndpoint string

@description('Key Vault URI with its trailing slash (https://<vault>.vault.azure.net/).')
param keyVaultUri string

@description('Key Vault secret names of the webhook secrets: { mlflow, github, databricks }.')
param webhookSecretNames object

@description('SIGNALBOX_ENVIRONMENT: dev, staging or prod.')
param environmentName string

@description('SIGNALBOX_LANDING_CONTAINER: the landing container Event Grid watches.')
param landingContainer string

@description('SIGNALBOX_LANDING_ACCOUNT_URL: the landing account\'s blob endpoint, which the landing sweep lists.')
param landingAccountUrl string

@description('SIGNALBOX_CATALOGUE: the catalogue in the deployed package (the app root is /home/site/wwwroot).')
param catalogueFile string

@description('SIGNALBOX_SERVING: databricks or azureml.')
@allowed([
  'databricks'
  'azureml'
])
param servingBackend string

@description('SIGNALBOX_REGISTRY: mlflow (MLFLOW_TRACKING_URI) or azureml.')
@allowed([
  'mlflow'
  'azureml'
])
param registryBackend string

@description('MLFLOW_TRACKING_URI (e.g. databricks); empty with the azureml registry.')
param mlflowTrackingUri string

@description('MLFLOW_REGISTRY_URI (e.g. databricks-uc); empty for the tracking URI.')
param mlflowRegistryUri string

@description('DATABRICKS_HOST: https://adb-<id>.<n>.azuredatabricks.net, or empty.')
param databricksHost string

@description('Key Vault secret name of a Databricks token; empty: the managed identity signs in to Databricks.')
param databricksTokenSecretName string

@description('AZUREML_SUBSCRIPTION_ID of the Azure ML workspace, or empty.')
param azuremlSubscriptionId string

@description('AZUREML_RESOURCE_GROUP of the Azure ML workspace, or empty.')
param azuremlResourceGroup string

@description('AZUREML_WORKSPACE: the Azure ML workspace name, or empty.')
param azuremlWorkspace string

@description('SIGNALBOX_AZUREML_INSTANCE_TYPE of managed online deployments.')
param azuremlInstanceType string

@description('SIGNALBOX_GITHUB_BRANCHES: branch=environment pairs this environment retrains for.')
param githubBranches string

@description('SIGNALBOX_GITHUB_PATHS: path globs whose change retrains.')
param githubPaths string

@description('SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS.')
param webhookToleranceSeconds int

@description('SIGNALBOX_RETRY_MAX_ATTEMPTS: transient failures retried by scheduled re-send before dead-lettering.')
param retryMaxAttempts int

@description('SIGNALBOX_RETRY_INITIAL_SECONDS (a number, as a string).')
param retryInitialSeconds string

@description('SIGNALBOX_RETRY_MAX_SECONDS (a number, as a string).')
param retryMaxSeconds string

@description('SIGNALBOX_POLL_INITIAL_SECONDS (a number, as a string).')
param pollInitialSeconds string

@description('SIGNALBOX_POLL_MAX_SECONDS (a number, as a string).')
param pollMaxSeconds string

@description('SIGNALBOX_POLL_MAX_ATTEMPTS.')
param pollMaxAttempts int

@description('SIGNALBOX_RECONCILE_SCHEDULE: NCRONTAB (6 fields) of the reconciliation sweep timer.')
param reconcileSchedule string = '0 */5 * * * *'

@description('SIGNALBOX_RECONCILE_GRACE_SECONDS: how old an unannounced version must be before the sweep evaluates it.')
param reconcileGraceSeconds string = '120'

@description('SIGNALBOX_DATABRICKS_HTTP_TIMEOUT_SECONDS: how long one Databricks API call may take.')
param databricksHttpTimeoutSeconds int = 60

@description('SIGNALBOX_CODE_COMMIT: the commit being deployed (set by the deploy workflow).')
param codeCommit string

@description('SIGNALBOX_CODE_REPOSITORY: owner/name of the repository (set by the deploy workflow).')
param codeRepository string

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
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
    // The host, the deployment and Event Grid's dead-lettering all use the managed identity.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetter 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainer
  properties: {
    publicAccess: 'None'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references resolve with the user-assigned identity (Key Vault Secrets User).
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainer.name}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: {
    // Host storage with the managed identity (Storage Blob Data Owner on this account).
    AzureWebJobsStorage__accountName: storage.name
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    // DefaultAzureCredential (Blob landing zone, Event Grid, Azure ML, Databricks) picks this identity.
    AZURE_CLIENT_ID: identityClientId
    // The Service Bus triggers' connection "ServiceBusConnection", identity-based; the bus adapter
    // reads the same settings. ServiceBusConnection (a connection string) stays empty.
    ServiceBusConnection: ''
    ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
    ServiceBusConnection__credential: 'managedidentity'
    ServiceBusConnection__clientId: identityClientId
    // Queue depths from Azure Monitor metrics with Monitoring Reader on the namespace (no Data Owner).
    SIGNALBOX_SERVICEBUS_RESOURCE_ID: serviceBusResourceId
    SIGNALBOX_ENVIRONMENT: environmentName
    // The app's package is read-only: local state (caches, scratch files) lives under /tmp.
    SIGNALBOX_STATE_DIR: '/tmp/signalbox'
    SIGNALBOX_CATALOGUE: catalogueFile
    SIGNALBOX_BUS: 'servicebus'
    SIGNALBOX_SERVING: servingBackend
    SIGNALBOX_EVENTS: 'eventgrid'
    SIGNALBOX_LANDING: 'blob'
    SIGNALBOX_REGISTRY: registryBackend
    SIGNALBOX_EVENTGRID_ENDPOINT: eventGridEndpoint
    // Empty: the topic has local auth off, Signalbox publishes with its identity (EventGrid Data Sender).
    SIGNALBOX_EVENTGRID_KEY: ''
    // Event Grid's dead-letter container (signalbox dlq --source eventgrid); Storage Blob Data Owner on this account.
    SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL: '${storage.properties.primaryEndpoints.blob}${deadLetter.name}'
    SIGNALBOX_LANDING_CONTAINER: landingContainer
    SIGNALBOX_LANDING_ACCOUNT_URL: landingAccountUrl
    SIGNALBOX_HOST_URL: 'https://${site.properties.defaultHostName}'
    MLFLOW_TRACKING_URI: mlflowTrackingUri
    MLFLOW_REGISTRY_URI: mlflowRegistryUri
    DATABRICKS_HOST: databricksHost
    DATABRICKS_TOKEN: empty(databricksTokenSecretName) ? '' : '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${databricksTokenSecretName}/)'
    AZUREML_SUBSCRIPTION_ID: azuremlSubscriptionId
    AZUREML_RESOURCE_GROUP: azuremlResourceGroup
    AZUREML_WORKSPACE: azuremlWorkspace
    SIGNALBOX_AZUREML_INSTANCE_TYPE: azuremlInstanceType
    // Webhook secrets: Key Vault references (no version: the latest version is used).
    SIGNALBOX_MLFLOW_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${webhookSecretNames.mlflow}/)'
    SIGNALBOX_GITHUB_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${webhookSecretNames.github}/)'
    SIGNALBOX_DATABRICKS_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${webhookSecretNames.databricks}/)'
    SIGNALBOX_GITHUB_BRANCHES: githubBranches
    SIGNALBOX_GITHUB_PATHS: githubPaths
    SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS: string(webhookToleranceSeconds)
    SIGNALBOX_RETRY_MAX_ATTEMPTS: string(retryMaxAttempts)
    SIGNALBOX_RETRY_INITIAL_SECONDS: retryInitialSeconds
    SIGNALBOX_RETRY_MAX_SECONDS: retryMaxSeconds
    SIGNALBOX_POLL_INITIAL_SECONDS: pollInitialSeconds
    SIGNALBOX_POLL_MAX_SECONDS: pollMaxSeconds
    SIGNALBOX_POLL_MAX_ATTEMPTS: string(pollMaxAttempts)
    SIGNALBOX_RECONCILE_SCHEDULE: reconcileSchedule
    SIGNALBOX_RECONCILE_GRACE_SECONDS: reconcileGraceSeconds
    SIGNALBOX_DATABRICKS_HTTP_TIMEOUT_SECONDS: string(databricksHttpTimeoutSeconds)
    SIGNALBOX_CODE_COMMIT: codeCommit
    SIGNALBOX_CODE_REPOSITORY: codeRepository
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output storageAccountName string = storage.name
output storageAccountId string = storage.id
output deadLetterContainer string = deadLetter.name
