metadata description = 'Private endpoints for one resource, one per sub-resource (group id), each with a DNS zone group that writes its A record into the private DNS zones named (created by modules/private-dns.bicep in the same resource group).'

@description('Name prefix; each endpoint is <name>-<groupId>.')
param name string

@description('Azure region (the VNet\'s).')
param location string

@description('Tags applied to the endpoints.')
param tags object = {}

@description('Subnet the endpoints\' network interfaces are placed in.')
param subnetId string

@description('Resource id of the service the endpoints connect to.')
param targetResourceId string

@description('One endpoint per entry: [{ groupId, zones: [private DNS zone names] }].')
param groups array

resource endpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for group in groups: {
    name: '${name}-${group.groupId}'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: subnetId
      }
      privateLinkServiceConnections: [
        {
          name: '${name}-${group.groupId}'
          properties: {
            privateLinkServiceId: targetResourceId
            groupIds: [
              group.groupId
            ]
          }
        }
      ]
    }
  }
]

// The zone group keeps the A record in step with the endpoint's address
// (https://learn.microsoft.com/azure/private-link/private-endpoint-dns#private-dns-zone-group).
resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (group, index) in groups: {
    parent: endpoints[index]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: map(group.zones, zone => {
        name: replace(zone, '.', '-')
        properties: {
          privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', zone)
        }
      })
    }
  }
]

@description('Endpoint names.')
output names string[] = [for (group, index) in groups: endpoints[index].name]
