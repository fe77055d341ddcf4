metadata description = 'The virtual network of the networkIsolation option: one subnet delegated to Flex Consumption for the function app\'s outbound VNet integration, one for the private endpoints of every service the app reaches. Address plan: infra/network.json.'

@description('Virtual network name.')
param name string

@description('Azure region (the function app\'s: VNet integration needs the VNet in the app\'s region).')
param location string

@description('Tags applied to the network.')
param tags object = {}

@description('Address space of the VNet, e.g. 10.40.0.0/16.')
param addressSpace string

@description('The function app\'s integration subnet: { name, addressPrefix }.')
param appSubnet object

@description('The private endpoint subnet: { name, addressPrefix }.')
param privateEndpointSubnet object

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressSpace
      ]
    }
    subnets: [
      {
        // Flex Consumption VNet integration: the subnet is delegated to Microsoft.App/environments
        // ("Considerations", https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan)
        // and is used for nothing else: no private endpoints, no service endpoints, no other
        // delegation ("Enable virtual network integration",
        // https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to). Each instance
        // takes an address from it, so it is sized above scale.json maximumInstanceCount
        // (tests/unit/test_infra_network.py checks the arithmetic).
        name: appSubnet.name
        properties: {
          addressPrefix: appSubnet.addressPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        // Private endpoints only; network policies off so the endpoints' routes are the platform's.
        name: privateEndpointSubnet.name
        properties: {
          addressPrefix: privateEndpointSubnet.addressPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

@description('VNet resource id, for the private DNS zone links.')
output id string = vnet.id

@description('Integration subnet id, for the function app\'s virtualNetworkSubnetId.')
output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, appSubnet.name)

@description('Private endpoint subnet id.')
output privateEndpointSubnetId string = resourceId(
  'Microsoft.Network/virtualNetworks/subnets',
  vnet.name,
  privateEndpointSubnet.name
)
