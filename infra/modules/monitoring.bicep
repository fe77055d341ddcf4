metadata description = 'Log Analytics and workspace-based Application Insights with local (key) authentication disabled: telemetry is accepted only from identities holding Monitoring Metrics Publisher.'

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Azure region.')
param location string

@description('Tags applied to both resources.')
param tags object = {}

@description('Days the workspace keeps logs.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

@description('Role assignments on the Application Insights component: [{ principalId, roleDefinitionId, principalType }].')
param roleAssignments array = []

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    // Entra ID only: the connection string alone cannot write telemetry.
    DisableLocalAuth: true
  }
}

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roleAssignments: {
    name: guid(appInsights.id, role.principalId, role.roleDefinitionId)
    scope: appInsights
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.roleDefinitionId)
      principalId: role.principalId
      principalType: role.principalType
    }
  }
]

@description('Name of the Application Insights component.')
output applicationInsightsName string = appInsights.name

@description('Connection string (an endpoint and an instrumentation key; not a credential, since local auth is off).')
output connectionString string = appInsights.properties.ConnectionString
