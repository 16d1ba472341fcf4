// Key Vault for the webhook secrets (RBAC authorization, no access policies). The secrets' values are
// never in a template: the operator creates them (docs/deploy.md, "Webhook secrets"), and the Function
// App reads them through Key Vault references with its managed identity (Key Vault Secrets User).

@description('Name of the key vault (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object

@description('Purge protection (irreversible once on; recommended for prod).')
param enablePurgeProtection bool = true

@description('Days a deleted vault or secret can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The API accepts only true (or nothing): purge protection cannot be turned off again.
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
  }
}

output name string = vault.name
output id string = vault.id
// Ends with a slash: https://<name>.vault.azure.net/
output vaultUri string = vault.properties.vaultUri
