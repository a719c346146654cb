// bc-dataverse-sync in Azure: `azd up` (azure.yaml) deploys this template, then the code.
// A resource group holding a Flex Consumption Function App (Python 3.11, system-assigned managed
// identity), its storage account (queues, tables and the deployment package, reached by identity:
// shared keys are off), Application Insights, and a Key Vault with the two webhook secrets.
// docs/deploy.md walks through it, including what to grant in BC and Dataverse.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; names the resource group and derives the resource names.')
param environmentName string

@minLength(1)
@description('Azure region of every resource; Flex Consumption must be offered there.')
param location string

@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com')
param dataverseUrl string

@description('BC API root: https://api.businesscentral.dynamics.com/v2.0/<tenant>/<environment>/api/v2.0')
param bcApiUrl string

@description('Comma-separated ids (GUIDs) of the BC companies to synchronize.')
param bcCompanyIds string

@secure()
@minLength(16)
@description('Secret Dataverse sends with each webhook call (16+ random characters).')
param dataverseWebhookSecret string

@secure()
@minLength(16)
@description('clientState registered with BC subscriptions and checked on every notification (16+ random characters).')
param bcWebhookClientState string

@description('systemuserid of the integration application user in Dataverse; empty: asked with WhoAmI.')
param dataverseIntegrationUserId string = ''

@description('Audience of the tokens the admin API accepts (the app registration\'s Application ID URI or client id); empty keeps /api/manage closed (503).')
param authAudience string = ''

var tags = { 'azd-env-name': environmentName }

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module resources 'resources.bicep' = {
  name: 'resources'
  scope: group
  params: {
    location: location
    tags: tags
    resourceToken: toLower(uniqueString(subscription().id, environmentName, location))
    dataverseUrl: dataverseUrl
    bcApiUrl: bcApiUrl
    bcCompanyIds: bcCompanyIds
    dataverseWebhookSecret: dataverseWebhookSecret
    bcWebhookClientState: bcWebhookClientState
    dataverseIntegrationUserId: dataverseIntegrationUserId
    authAudience: authAudience
  }
}

output AZURE_RESOURCE_GROUP string = group.name
output FUNCTION_APP_NAME string = resources.outputs.functionAppName
output SERVICE_PUBLIC_URL string = resources.outputs.publicUrl
output BC_WEBHOOK_URL string = resources.outputs.bcWebhookUrl
output DATAVERSE_WEBHOOK_URL string = resources.outputs.dataverseWebhookUrl
output MANAGED_IDENTITY_PRINCIPAL_ID string = resources.outputs.principalId
