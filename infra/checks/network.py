"""Network isolation: private endpoints, DNS zones, public access and VNet integration."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra.bicep_scan import (
    ModuleCall,
    try_evaluate,
)
from infra.checks.model import InfraModel

# ----------------------------------------------------------------------------------------------
# Network isolation
# ----------------------------------------------------------------------------------------------

PRIVATE_ENDPOINT_DOC = "https://learn.microsoft.com/azure/private-link/private-endpoint-dns"

PRIVATE_ENDPOINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "hostStorage": {"blob": ("blob",), "queue": ("queue",), "table": ("table",)},
    "batchStorage": {"blob": ("blob",), "queue": ("queue",)},
    "serviceBus": {"namespace": ("serviceBus",)},
    "eventHubs": {"namespace": ("serviceBus",)},
    "cosmos": {"Sql": ("cosmosSql",)},
    "keyVault": {"vault": ("keyVault",)},
    "openAi": {"account": ("openAi", "cognitiveServices")},
}
"""main.bicep service module -> the private endpoint sub-resources (group ids) it needs -> the keys
of infra/network.json privateDnsZones its zone group writes to (``PRIVATE_ENDPOINT_DOC``). Host
storage needs blob, queue and table: AzureWebJobsStorage uses all three (``HOST_STORAGE_DOC``)."""

_ISOLATION = "networkIsolation"
_PRIVATE_ENDPOINT_MODULE = "modules/private-endpoint.bicep"


def _outputs_of(expression: str) -> tuple[str, str] | None:
    """``(module symbol, output)`` of ``sym.outputs.x`` or ``sym!.outputs.x``."""
    match = re.fullmatch(r"([A-Za-z_]\w*)!?\.outputs\.([A-Za-z_]\w*)", expression.strip())
    return (match.group(1), match.group(2)) if match else None


_ON = {_ISOLATION: True}
_OFF = {_ISOLATION: False}


class _Stop(Exception):
    """Problems after which the rest of the network checks cannot run."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = problems


def network_problems(model: InfraModel, scale: Mapping[str, Any]) -> list[str]:
    """With ``networkIsolation`` on, every service the app reaches has its private endpoints and
    DNS zone groups, its public network access is off, and the app joins the VNet through a
    Flex Consumption subnet; with it off (the default), nothing of that exists and access is
    public."""
    main = model.main
    if main.params.get(_ISOLATION) != "false":
        return [f"infra/main.bicep has no 'param {_ISOLATION} bool = false'"]
    network_calls = model.calls("modules/network.bicep")
    dns_calls = model.calls("modules/private-dns.bicep")
    if len(network_calls) != 1 or len(dns_calls) != 1:
        return [
            "infra/main.bicep must call modules/network.bicep and modules/private-dns.bicep once"
        ]
    vnet, dns = network_calls[0], dns_calls[0]
    problems = _isolated_only(model, vnet) + _isolated_only(model, dns)
    try:
        problems += _subnet_problems(model, vnet, scale)
        zones, zone_problems = _dns_zones(model, vnet, dns)
        problems += zone_problems
        problems += _vnet_integration_problems(model, vnet)
        problems += _private_endpoint_problems(model, vnet, dns, zones)
    except _Stop as stop:
        return [*problems, *stop.problems]
    problems += _public_access_problems(model)
    return problems + _service_bus_sku_problems(model)


def _isolated_only(model: InfraModel, call: ModuleCall) -> list[str]:
    """``call`` is deployed exactly when ``networkIsolation`` is on."""
    if call.condition is None:
        return [f"infra/main.bicep module {call.symbol} is deployed without {_ISOLATION}"]
    problems: list[str] = []
    for overrides, want in ((_ON, True), (_OFF, False)):
        known, value = try_evaluate(model.main, call.condition, overrides)
        if not known or bool(value) != want:
            problems.append(
                f"infra/main.bicep module {call.symbol}: condition {call.condition!r} is "
                f"{value if known else 'not static'} with {_ISOLATION}={want}"
            )
    return problems


def _subnet_problems(model: InfraModel, vnet: ModuleCall, scale: Mapping[str, Any]) -> list[str]:
    """The app subnet is delegated to Flex Consumption, both subnets sit apart inside the VNet,
    and the app subnet has an address for every instance."""
    import ipaddress

    main = model.main
    problems: list[str] = []
    network_module = model.modules["modules/network.bicep"]
    delegations = {
        str(network_module.evaluate(e)) for e in network_module.property_values("serviceName")
    }
    if delegations != {"Microsoft.App/environments"}:
        problems.append(
            "infra/modules/network.bicep must delegate the app subnet to "
            f"Microsoft.App/environments (Flex Consumption), found {sorted(delegations)}"
        )
    try:
        space = ipaddress.ip_network(str(main.evaluate(vnet.params["addressSpace"])))
        app = main.evaluate(vnet.params["appSubnet"])
        endpoints = main.evaluate(vnet.params["privateEndpointSubnet"])
        app_net = ipaddress.ip_network(app["addressPrefix"])
        pe_net = ipaddress.ip_network(endpoints["addressPrefix"])
    except (KeyError, ValueError, TypeError) as error:
        problems.append(f"infra/main.bicep network module: address plan unreadable ({error})")
        raise _Stop(*problems) from None
    for label, subnet in (("app", app_net), ("private endpoint", pe_net)):
        if not subnet.subnet_of(space):  # type: ignore[arg-type]
            problems.append(f"the {label} subnet {subnet} is outside the VNet {space}")
    if app_net.overlaps(pe_net):
        problems.append(f"the app subnet {app_net} overlaps the private endpoint subnet {pe_net}")
    # Azure keeps five addresses of every subnet; each Flex instance takes one.
    usable = app_net.num_addresses - 5
    if usable < int(scale["maximumInstanceCount"]):
        problems.append(
            f"the app subnet {app_net} has {usable} usable addresses, fewer than scale.json "
            f"maximumInstanceCount {scale['maximumInstanceCount']}"
        )
    return problems


def _dns_zones(model: InfraModel, vnet: ModuleCall, dns: ModuleCall) -> tuple[Any, list[str]]:
    """The private DNS zones main.bicep creates, linked to the VNet."""
    problems: list[str] = []
    zones_known, zones = try_evaluate(model.main, dns.params.get("zoneNames", ""))
    if not zones_known:
        problems.append("infra/main.bicep private-dns zoneNames are not static")
        zones = []
    if _outputs_of(dns.params.get("vnetId", "")) != (vnet.symbol, "id"):
        problems.append("infra/main.bicep private-dns is not linked to the VNet module's id")
    return zones, problems


def _vnet_integration_problems(model: InfraModel, vnet: ModuleCall) -> list[str]:
    """The function app joins the VNet through the app subnet, and only when isolated."""
    problems: list[str] = []
    for call in model.calls("modules/functionapp.bicep"):
        expression = call.params.get("virtualNetworkSubnetId", "")
        known, value = try_evaluate(model.main, expression, _OFF)
        if not known or value != "":
            problems.append(f"infra/main.bicep {call.symbol}: no VNet integration unless isolated")
        if f"{vnet.symbol}!.outputs.appSubnetId" not in expression.replace(" ", ""):
            problems.append(
                f"infra/main.bicep {call.symbol} virtualNetworkSubnetId does not take the app "
                "subnet when isolated"
            )
    if "virtualNetworkSubnetId" not in "".join(
        model.modules["modules/functionapp.bicep"].property_values("virtualNetworkSubnetId")
    ):
        problems.append(
            "infra/modules/functionapp.bicep does not set the site's virtualNetworkSubnetId"
        )
    return problems


def _private_endpoint_problems(
    model: InfraModel, vnet: ModuleCall, dns: ModuleCall, zones: Any
) -> list[str]:
    """One private endpoint call per service, in the endpoint subnet, with its zone groups."""
    endpoint_module = model.modules.get(_PRIVATE_ENDPOINT_MODULE)
    if endpoint_module is None:
        raise _Stop(f"infra/main.bicep never calls {_PRIVATE_ENDPOINT_MODULE}")
    problems: list[str] = []
    for resource_type in (
        "Microsoft.Network/privateEndpoints",
        "Microsoft.Network/privateEndpoints/privateDnsZoneGroups",
    ):
        if resource_type not in endpoint_module.resource_types:
            problems.append(f"infra/{_PRIVATE_ENDPOINT_MODULE} declares no {resource_type}")
    if len(
        re.findall(r"in groups:", endpoint_module.text)
    ) < 2 or "parent: endpoints[index]" not in (endpoint_module.text):
        problems.append(
            f"infra/{_PRIVATE_ENDPOINT_MODULE}: every endpoint needs its own DNS zone group "
            "(both loops over groups, the zone group's parent the endpoint)"
        )
    targets, target_problems = _endpoint_targets(model, vnet, dns)
    problems += target_problems
    for service, groups in PRIVATE_ENDPOINTS.items():
        problems += _endpoint_group_problems(model, service, groups, targets.get(service), zones)
    for extra in sorted(set(targets) - set(PRIVATE_ENDPOINTS)):
        problems.append(
            f"infra/main.bicep gives {extra} a private endpoint infra/checks/network.py "
            "PRIVATE_ENDPOINTS does not describe"
        )
    return problems


def _endpoint_targets(
    model: InfraModel, vnet: ModuleCall, dns: ModuleCall
) -> tuple[dict[str, ModuleCall], list[str]]:
    """Service module symbol -> its private endpoint call, each checked for subnet and order."""
    targets: dict[str, ModuleCall] = {}
    problems: list[str] = []
    for call in model.calls(_PRIVATE_ENDPOINT_MODULE):
        target = _outputs_of(call.params.get("targetResourceId", ""))
        if target is None or target[1] != "id":
            problems.append(
                f"infra/main.bicep {call.symbol}: targetResourceId is not <module>.outputs.id"
            )
            continue
        targets[target[0]] = call
        problems += _isolated_only(model, call)
        if _outputs_of(call.params.get("subnetId", "")) != (vnet.symbol, "privateEndpointSubnetId"):
            problems.append(f"infra/main.bicep {call.symbol} is not in the private endpoint subnet")
        if dns.symbol not in call.entries.get("dependsOn", ""):
            problems.append(
                f"infra/main.bicep {call.symbol} does not depend on {dns.symbol}: its zone group "
                "would name zones that may not exist yet"
            )
    return targets, problems


def _endpoint_group_problems(
    model: InfraModel,
    service: str,
    groups: Mapping[str, tuple[str, ...]],
    endpoint: ModuleCall | None,
    zones: Any,
) -> list[str]:
    """``service``'s endpoint declares exactly the sub-resources and DNS zones it needs."""
    main = model.main
    if service not in main.modules:
        return [f"infra/main.bicep has no module {service}"]
    if endpoint is None:
        return [
            f"infra/main.bicep module {service} has no private endpoint "
            f"({_PRIVATE_ENDPOINT_MODULE} with targetResourceId {service}.outputs.id)"
        ]
    known, declared = try_evaluate(main, endpoint.params.get("groups", ""), _ON)
    if not known:
        return [f"infra/main.bicep {endpoint.symbol} groups are not static"]
    problems: list[str] = []
    zone_names = main.evaluate("network.privateDnsZones") if "network" in main.vars else {}
    by_group = {entry["groupId"]: tuple(entry["zones"]) for entry in declared}
    want = {
        group: tuple(zone_names.get(key, key) for key in keys) for group, keys in groups.items()
    }
    if by_group != want:
        problems.append(
            f"infra/main.bicep {endpoint.symbol}: endpoints {by_group} but {service} needs "
            f"{want} ({PRIVATE_ENDPOINT_DOC})"
        )
    for zone in sorted({z for zs in by_group.values() for z in zs} - set(zones)):
        problems.append(
            f"infra/main.bicep {endpoint.symbol} writes to zone {zone!r}, which private-dns "
            "does not create"
        )
    return problems


def _public_access_problems(model: InfraModel) -> list[str]:
    """Public network access: Enabled by default, Disabled when isolated, in every service."""
    problems: list[str] = []
    for service in PRIVATE_ENDPOINTS:
        service_call = model.main.modules.get(service)
        if service_call is None:
            continue
        access_expression = service_call.params.get("publicNetworkAccess")
        if access_expression is None:
            problems.append(f"infra/main.bicep module {service} passes no publicNetworkAccess")
            continue
        for overrides, access in ((_OFF, "Enabled"), (_ON, "Disabled")):
            known, value = try_evaluate(model.main, access_expression, overrides)
            if not known or value != access:
                problems.append(
                    f"infra/main.bicep module {service}: publicNetworkAccess is "
                    f"{value if known else 'not static'} with {_ISOLATION}={access == 'Disabled'}, "
                    f"expected {access}"
                )
                continue
            problems += _module_access_problems(model, service_call, access)
    return problems


def _module_access_problems(model: InfraModel, call: ModuleCall, access: str) -> list[str]:
    """The module's resource takes the ``publicNetworkAccess`` it is given, and its network
    ACLs deny by default when access is disabled."""
    module = model.modules[call.path]
    problems: list[str] = []
    values = [
        module.evaluate(e, {"publicNetworkAccess": access})
        for e in module.property_values("publicNetworkAccess")
    ]
    if values != [access]:
        problems.append(
            f"infra/{call.path}: the resource's publicNetworkAccess is {values} "
            f"when the module is given {access}"
        )
    deny = "Deny" if access == "Disabled" else "Allow"
    for e in module.property_values("defaultAction"):
        action = module.evaluate(e, {"publicNetworkAccess": access})
        if action != deny:
            problems.append(
                f"infra/{call.path}: networkAcls defaultAction is {action} with "
                f"publicNetworkAccess {access}, expected {deny}"
            )
    return problems


def _service_bus_sku_problems(model: InfraModel) -> list[str]:
    """Private endpoints need Service Bus Premium; Standard otherwise."""
    service_bus = model.main.modules.get("serviceBus")
    if service_bus is None:
        return []
    problems: list[str] = []
    for overrides, sku in ((_OFF, "Standard"), (_ON, "Premium")):
        _, value = try_evaluate(model.main, service_bus.params.get("skuName", "''"), overrides)
        if value != sku:
            problems.append(
                f"infra/main.bicep serviceBus skuName is {value} with {_ISOLATION}="
                f"{sku == 'Premium'}: private endpoints need Premium, Standard otherwise"
            )
    return problems
