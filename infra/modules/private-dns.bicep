metadata description = 'Private DNS zones for the private endpoints of the networkIsolation option, each linked to the VNet so the function app resolves service names to private addresses. Zone names: infra/network.json.'

@description('Zone names, e.g. privatelink.blob.core.windows.net.')
param zoneNames string[]

@description('Resource id of the VNet the zones are linked to.')
param vnetId string

@description('Tags applied to the zones and links.')
param tags object = {}

// Private DNS zones are global resources.
resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for zoneName in zoneNames: {
    name: zoneName
    location: 'global'
    tags: tags
  }
]

// The link is what makes the VNet's resolver (and so the VNet-integrated app) answer with the
// endpoints' private addresses; no auto-registration, the endpoints' zone groups write the records.
resource links 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (zoneName, index) in zoneNames: {
    parent: zones[index]
    name: 'vnet-link'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnetId
      }
    }
  }
]

@description('Zone names, in the order given.')
output names string[] = [for (zoneName, index) in zoneNames: zones[index].name]
