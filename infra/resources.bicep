// The resources of one deployment (see main.bicep). Every app setting the code reads is set here;
// tests/unit/test_infra.py checks that against shared/settings.py and the binding settings.
param location string
param tags object
param resourceToken string
param dataverseUrl string
param bcApiUrl string
param bcCompanyIds string
@secure()
param dataverseWebhookSecret string
@secure()
param bcWebhookClientState string
param dataverseIntegrationUserId string
param authAudience string

// The instances share the integration user's request budget through storage, but each keeps its
// own share of BC's 5 concurrent requests per user (at least one), so more than 5 instances could
// exceed it: docs/deploy.md#scale-out. Also given to the code as SCALE_OUT_MAX_INSTANCES.
@description('Most instances at once (Flex Consumption maximumInstanceCount; the platform allows 1-1000): at most 5, BC\'s concurrent requests per user.')
@minValue(1)
@maxValue(5)
param maximumInstanceCount int = 3

var functionAppName = 'func-bcsync-${resourceToken}'
var deploymentContainer = 'app-package-${resourceToken}'
// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles)
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stbcsync${take(resourceToken, 14)}'
  location: location
  tags: tags
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // the app reaches storage with its identity only
    defaultToOAuthAuthentication: true
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packages 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: deploymentContainer
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-bcsync-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-bcsync-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // telemetry is sent with the app's identity
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-bcsync-${take(resourceToken, 12)}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

resource dataverseSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'dataverse-webhook-secret'
  properties: { value: dataverseWebhookSecret }
}

resource bcSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'bc-webhook-client-state'
  properties: { value: bcWebhookClientState }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-bcsync-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, { 'azd-service-name': 'sync' })
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: { minTlsVersion: '1.2', ftpsState: 'Disabled' }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: { maximumInstanceCount: maximumInstanceCount, instanceMemoryMB: 2048 }
      runtime: { name: 'python', version: '3.11' }
    }
  }
}

resource grants 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor]: {
    name: guid(storage.id, app.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: app.identity.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource secretsGrant 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, app.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource telemetryGrant 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, app.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

var publicUrl = 'https://${app.properties.defaultHostName}'
var tenantAuthority = '${environment().authentication.loginEndpoint}${subscription().tenantId}'

// Set apart from the site so that the settings can name the site's own host name. Flex Consumption
// takes the runtime from functionAppConfig: FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION must not be set.
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: app
  name: 'appsettings'
  dependsOn: [grants, secretsGrant, telemetryGrant]
  properties: {
    AzureWebJobsStorage__accountName: storage.name
    APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
    SYNC_QUEUE_NAME: 'sync-requests'
    DATAVERSE_URL: dataverseUrl
    DATAVERSE_WEBHOOK_AUTH_TYPE: 'webhook_key'
    DATAVERSE_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${dataverseSecret.properties.secretUri})'
    DATAVERSE_WEBHOOK_SECRET_NAME: 'x-bcsync-key'
    DATAVERSE_INTEGRATION_USER_ID: dataverseIntegrationUserId
    DATAVERSE_AUTH_MODE: 'entra' // online; on-premises: docs/deploy.md#on-premises-business-central-and-dynamics-365-sales
    BC_API_URL: bcApiUrl
    BC_COMPANY_IDS: bcCompanyIds
    BC_WEB_CLIENT_URL: '' // online: derived from BC_API_URL; on-premises: the web client's URL
    BC_AUTH_MODE: 'entra' // online; on-premises (oauth, basic): docs/deploy.md
    BC_WEBHOOK_CLIENT_STATE: '@Microsoft.KeyVault(SecretUri=${bcSecret.properties.secretUri})'
    SERVICE_PUBLIC_URL: publicUrl
    MAPPINGS_FILE: 'mappings/default.yaml'
    DELTA_POLL_SCHEDULE: '0 */2 * * * *'
    FULL_RESYNC_SCHEDULE: '0 0 2 * * *'
    SUBSCRIPTION_UPKEEP_SCHEDULE: '0 0 */12 * * *'
    STATISTICS_SCHEDULE: '0 */30 * * * *'
    BC_SWEEP_MINUTES: '10'
    SCALE_OUT_MAX_INSTANCES: string(maximumInstanceCount)
    AUTH_ISSUER: '${tenantAuthority}/v2.0'
    AUTH_AUDIENCE: authAudience
    AUTH_JWKS_URL: '${tenantAuthority}/discovery/v2.0/keys'
    ROLE_ADMINISTRATOR: 'Integration.Administrator'
    ROLE_USER: 'Integration.User'
    ROLE_AVAILABILITY: 'ProductAvailability.User'
    OTEL_EXPORTER_OTLP_ENDPOINT: ''  // Application Insights is the exporter in Azure
    TELEMETRY_FILE: ''  // the local stack's exporter
  }
}

output functionAppName string = app.name
output publicUrl string = publicUrl
output bcWebhookUrl string = '${publicUrl}/api/webhooks/bc'
output dataverseWebhookUrl string = '${publicUrl}/api/webhooks/dataverse'
output principalId string = app.identity.principalId
