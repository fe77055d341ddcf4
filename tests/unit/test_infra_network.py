"""networkIsolation in infra/main.bicep: off by default, and complete when on.

Read through the Bicep scanner (infra/bicep_scan.py), with the parameter set both ways: every
service the app reaches gets its private endpoints, each with a DNS zone group writing into a zone
linked to the VNet; public network access is Enabled without the parameter and Disabled with it;
the Flex Consumption app joins the VNet through a subnet delegated to Microsoft.App/environments.
The checks live in infra/checks/network.py (``network_problems``); the tests run them on the
repository and on deliberately broken copies.

Docs the expectations come from:
- private endpoint sub-resources and zone names: https://learn.microsoft.com/azure/private-link/private-endpoint-dns
- Flex Consumption subnet delegation: https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan
- Service Bus private endpoints need Premium: https://learn.microsoft.com/azure/service-bus-messaging/private-link-service
- Event Grid push delivery cannot reach private endpoints: https://learn.microsoft.com/azure/event-grid/consume-private-endpoints
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra import bicep_scan as b  # noqa: E402
from infra import consistency as c  # noqa: E402

INFRA = REPO / "infra"
ON = {"networkIsolation": True}
OFF = {"networkIsolation": False}


@pytest.fixture(scope="module")
def model() -> c.InfraModel:
    return c.InfraModel.load(INFRA)


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    loaded: dict[str, Any] = c.load_json(REPO / "scale.json")
    return loaded


@pytest.fixture(scope="module")
def network() -> dict[str, Any]:
    loaded: dict[str, Any] = c.load_json(INFRA / "network.json")
    return loaded


def _mentioning(problems: list[str], *words: str) -> list[str]:
    return [problem for problem in problems if all(word in problem for word in words)]


def _endpoint_for(model: c.InfraModel, service: str) -> b.ModuleCall:
    [call] = [
        call
        for call in model.calls("modules/private-endpoint.bicep")
        if call.params["targetResourceId"].replace("!", "") == f"{service}.outputs.id"
    ]
    return call


def _after(model: c.InfraModel, old: str, new: str, path: str | None = None) -> c.InfraModel:
    source = model.main if path is None else model.modules[path]
    assert old in source.text, old
    changed = b.BicepFile(source.path, source.text.replace(old, new))
    if path is None:
        return c.InfraModel(changed, model.modules)
    return c.InfraModel(model.main, {**model.modules, path: changed})


# ----------------------------------------------------------------------------------------------
# The repository as it is
# ----------------------------------------------------------------------------------------------


def test_network_isolation_is_complete_and_off_by_default(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    problems = c.network_problems(model, scale)
    assert problems == [], "\n".join(problems)
    assert model.main.params["networkIsolation"] == "false"
    parameters = c.load_json(INFRA / "main.parameters.json")["parameters"]
    assert parameters["networkIsolation"]["value"] == "${AZURE_NETWORK_ISOLATION=false}"


@pytest.mark.parametrize("service", sorted(c.PRIVATE_ENDPOINTS))
def test_public_access_follows_the_parameter(model: c.InfraModel, service: str) -> None:
    call = model.main.modules[service]
    module = model.modules[call.path]
    expression = call.params["publicNetworkAccess"]
    assert model.main.evaluate(expression, OFF) == "Enabled"
    assert model.main.evaluate(expression, ON) == "Disabled"
    # The module hands the value to its resource unchanged, and its firewall follows.
    for access, action in (("Enabled", "Allow"), ("Disabled", "Deny")):
        given = {"publicNetworkAccess": access}
        [resource_value] = module.property_values("publicNetworkAccess")
        assert module.evaluate(resource_value, given) == access
        for default_action in module.property_values("defaultAction"):
            assert module.evaluate(default_action, given) == action


@pytest.mark.parametrize("service", sorted(c.PRIVATE_ENDPOINTS))
def test_every_service_has_its_private_endpoints_each_with_a_dns_zone_group(
    model: c.InfraModel, network: dict[str, Any], service: str
) -> None:
    call = _endpoint_for(model, service)
    assert model.main.evaluate(call.condition or "true", ON) is True
    assert model.main.evaluate(call.condition or "true", OFF) is False
    groups = model.main.evaluate(call.params["groups"])
    zones = network["privateDnsZones"]
    expected = {
        group: [zones[key] for key in keys] for group, keys in c.PRIVATE_ENDPOINTS[service].items()
    }
    assert {entry["groupId"]: entry["zones"] for entry in groups} == expected
    [dns] = model.calls("modules/private-dns.bicep")
    assert {z for entry in groups for z in entry["zones"]} <= set(
        model.main.evaluate(dns.params["zoneNames"])
    )
    assert "privateDns" in call.entries["dependsOn"]
    endpoint_module = model.modules["modules/private-endpoint.bicep"]
    assert "Microsoft.Network/privateEndpoints/privateDnsZoneGroups" in (
        endpoint_module.resource_types
    )


def test_host_storage_gets_blob_queue_and_table_endpoints(model: c.InfraModel) -> None:
    # AzureWebJobsStorage uses all three services (host, the blob trigger's queues, diagnostic
    # events), so each needs an endpoint once public access is off.
    groups = model.main.evaluate(_endpoint_for(model, "hostStorage").params["groups"])
    assert [entry["groupId"] for entry in groups] == ["blob", "queue", "table"]


def test_the_private_dns_zones_are_linked_to_the_vnet(model: c.InfraModel) -> None:
    module = model.modules["modules/private-dns.bicep"]
    assert "Microsoft.Network/privateDnsZones/virtualNetworkLinks" in module.resource_types
    [registration] = module.property_values("registrationEnabled")
    assert module.evaluate(registration) is False
    [dns] = model.calls("modules/private-dns.bicep")
    assert dns.params["vnetId"] == "vnet!.outputs.id"


def test_the_app_subnet_is_delegated_to_flex_consumption_and_sized_for_the_scale_limit(
    model: c.InfraModel, network: dict[str, Any], scale: dict[str, Any]
) -> None:
    module = model.modules["modules/network.bicep"]
    [delegation] = module.property_values("serviceName")
    assert module.evaluate(delegation) == "Microsoft.App/environments"
    space = ipaddress.ip_network(network["addressSpace"])
    app = ipaddress.ip_network(network["subnets"]["app"]["addressPrefix"])
    endpoints = ipaddress.ip_network(network["subnets"]["privateEndpoints"]["addressPrefix"])
    assert app.subnet_of(space)
    assert endpoints.subnet_of(space)
    assert not app.overlaps(endpoints)
    assert app.num_addresses - 5 >= scale["maximumInstanceCount"]
    [call] = model.calls("modules/functionapp.bicep")
    assert model.main.evaluate(call.params["virtualNetworkSubnetId"], OFF) == ""
    assert "vnet!.outputs.appSubnetId" in call.params["virtualNetworkSubnetId"]


def test_service_bus_is_premium_only_when_isolated(model: c.InfraModel) -> None:
    call = model.main.modules["serviceBus"]
    assert model.main.evaluate(call.params["skuName"], OFF) == "Standard"
    assert model.main.evaluate(call.params["skuName"], ON) == "Premium"


def test_an_existing_openai_account_gets_no_endpoint_from_this_template(
    model: c.InfraModel,
) -> None:
    call = _endpoint_for(model, "openAi")
    existing = {**ON, "existingOpenAiEndpoint": "https://elsewhere.openai.azure.com/"}
    assert model.main.evaluate(call.condition or "true", existing) is False


# ----------------------------------------------------------------------------------------------
# Broken copies: each gap is reported
# ----------------------------------------------------------------------------------------------


def test_a_service_without_a_private_endpoint_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    broken = _after(model, "targetResourceId: cosmos.outputs.id", "targetResourceId: elsewhere")
    problems = c.network_problems(broken, scale)
    assert _mentioning(problems, "module cosmos has no private endpoint")


def test_a_missing_storage_sub_resource_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    table = (
        "      {\n        groupId: 'table'\n        zones: [\n"
        "          network.privateDnsZones.table\n        ]\n      }\n"
    )
    problems = c.network_problems(_after(model, table, ""), scale)
    assert _mentioning(problems, "hostStoragePrivateEndpoints", "'table'")


def test_public_access_that_ignores_the_parameter_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    path = "modules/keyvault.bicep"
    broken = _after(
        model,
        "publicNetworkAccess: publicNetworkAccess\n",
        "publicNetworkAccess: 'Enabled'\n",
        path,
    )
    assert _mentioning(c.network_problems(broken, scale), "keyvault.bicep", "publicNetworkAccess")
    # And in main.bicep: a service left public when isolated.
    broken = _after(
        model,
        "keyVaultPurgeProtection\n    publicNetworkAccess: publicNetworkAccess",
        "keyVaultPurgeProtection\n    publicNetworkAccess: 'Enabled'",
    )
    assert _mentioning(c.network_problems(broken, scale), "module keyVault", "expected Disabled")


def test_a_firewall_left_open_is_reported(model: c.InfraModel, scale: dict[str, Any]) -> None:
    path = "modules/storage.bicep"
    broken = _after(
        model,
        "defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'",
        "defaultAction: 'Allow'",
        path,
    )
    assert _mentioning(c.network_problems(broken, scale), "storage.bicep", "defaultAction")


def test_an_endpoint_deployed_without_the_parameter_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    broken = _after(
        model,
        "serviceBusPrivateEndpoint 'modules/private-endpoint.bicep' = if (networkIsolation) {",
        "serviceBusPrivateEndpoint 'modules/private-endpoint.bicep' = {",
    )
    assert _mentioning(
        c.network_problems(broken, scale), "serviceBusPrivateEndpoint", "without networkIsolation"
    )


def test_a_zone_group_racing_its_zone_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    old = "    targetResourceId: eventHubs.outputs.id"
    start = model.main.text.index(old)
    end = model.main.text.index("  dependsOn: [\n    privateDns\n  ]\n", start)
    text = model.main.text[:end] + model.main.text[end:].replace(
        "  dependsOn: [\n    privateDns\n  ]\n", "", 1
    )
    broken = c.InfraModel(b.BicepFile(model.main.path, text), model.modules)
    assert _mentioning(c.network_problems(broken, scale), "eventHubsPrivateEndpoint", "depend")


def test_an_endpoint_writing_to_a_zone_nobody_creates_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    # The zone list of private-dns is indented six spaces; the endpoints' lists, ten.
    broken = _after(model, "\n      network.privateDnsZones.keyVault\n", "\n")
    assert _mentioning(c.network_problems(broken, scale), "privatelink.vaultcore.azure.net")


def test_an_app_subnet_too_small_for_the_scale_limit_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    problems = c.network_problems(model, dict(scale, maximumInstanceCount=1000))
    assert _mentioning(problems, "usable addresses", "maximumInstanceCount 1000")


def test_a_wrong_subnet_delegation_is_reported(model: c.InfraModel, scale: dict[str, Any]) -> None:
    broken = _after(
        model,
        "serviceName: 'Microsoft.App/environments'",
        "serviceName: 'Microsoft.Web/serverFarms'",
        "modules/network.bicep",
    )
    assert _mentioning(c.network_problems(broken, scale), "Microsoft.App/environments")


def test_a_standard_service_bus_when_isolated_is_reported(
    model: c.InfraModel, scale: dict[str, Any]
) -> None:
    broken = _after(
        model, "skuName: networkIsolation ? 'Premium' : 'Standard'", "skuName: 'Standard'"
    )
    assert _mentioning(c.network_problems(broken, scale), "skuName", "Premium")


def test_an_app_outside_the_vnet_is_reported(model: c.InfraModel, scale: dict[str, Any]) -> None:
    broken = _after(
        model,
        "virtualNetworkSubnetId: networkIsolation ? vnet!.outputs.appSubnetId : ''",
        "virtualNetworkSubnetId: ''",
    )
    assert _mentioning(c.network_problems(broken, scale), "virtualNetworkSubnetId")
