"""Run the simulator standalone: ``python -m devhost.simulator --port 8089 --tpm 210000``.

The first line on stdout is the base URL (``http://127.0.0.1:8089``), so a parent process can
read it; logs go to stderr. SIGINT/SIGTERM stop it. ``--config-json`` takes a full
``SimulatorConfig.to_dict()`` document (inline JSON or ``@path``), which other flags override.

The admin routes' key comes from the environment variable ``SIM_ADMIN_KEY`` (the environment,
unlike the command line, is not readable by other users); without it (and without an
``admin_key`` in ``--config-json``) a random key is made for this run and written to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

from devhost.lifeline import die_with_parent
from devhost.simulator.accounting import PROFILES
from devhost.simulator.config import ADMIN_KEY_ENV, ConfigValueError, SimulatorConfig
from devhost.simulator.server import start_simulator

log = logging.getLogger("devhost.simulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.simulator",
        description="Azure OpenAI chat-completions simulator (loopback only by default).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    parser.add_argument("--config-json", help="a SimulatorConfig document: JSON text or @file")
    parser.add_argument(
        "--deployment",
        action="append",
        default=[],
        metavar="NAME[=TPM[:ACCOUNTING]]",
        help="a deployment (repeatable), optionally with its accounting profile; unlisted names "
        "are accepted only with --tpm or when no deployment is listed",
    )
    parser.add_argument(
        "--accounting",
        choices=sorted(PROFILES),
        help="accounting profile of deployments that name none (default azure)",
    )
    parser.add_argument(
        "--tpm", type=int, help="tokens per minute of unlisted deployments (default 210000)"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute (default 6 per 1000 TPM)")
    parser.add_argument("--latency-ms", type=float, help="fixed latency for every answer")
    parser.add_argument("--ttft-ms", type=float, help="time to first token (latency model)")
    parser.add_argument("--per-token-ms", type=float, help="per completion token (latency model)")
    parser.add_argument("--jitter", type=float, help="relative latency jitter in [0, 1)")
    parser.add_argument("--api-key", help="the key clients send as api-key (default sim-key)")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without keys")
    parser.add_argument("--no-bearer", action="store_true", help="refuse arbitrary bearer tokens")
    parser.add_argument(
        "--error-rate",
        action="append",
        default=[],
        metavar="STATUS=RATE",
        help="random HTTP errors, e.g. 500=0.05 (repeatable)",
    )
    parser.add_argument("--timeout-rate", type=float)
    parser.add_argument("--timeout-s", type=float)
    parser.add_argument("--malformed-rate", type=float)
    parser.add_argument("--schema-rate", type=float)
    parser.add_argument("--content-filter-rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-level", default="INFO")
    return parser


# Flags that set one field of a config section: (field, argparse destination).
_LATENCY_FLAGS = (
    ("fixed_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"),
    ("per_token_ms", "per_token_ms"),
    ("jitter", "jitter"),
)
_FAULT_FLAGS = (
    ("timeout_rate", "timeout_rate"),
    ("timeout_s", "timeout_s"),
    ("malformed_json_rate", "malformed_rate"),
    ("schema_violation_rate", "schema_rate"),
    ("content_filter_rate", "content_filter_rate"),
)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the flags describe; ConfigValueError names a bad one."""
    config = SimulatorConfig.from_dict(_config_json(args.config_json))
    patch: dict[str, Any] = {**_credentials(args), **_limits(args, config)}
    if args.seed is not None:
        patch["seed"] = args.seed
    sections = {
        "latency": _set_flags(args, _LATENCY_FLAGS),
        "faults": _set_flags(args, _FAULT_FLAGS),
    }
    if args.error_rate:
        sections["faults"]["error_rates"] = {
            spec.partition("=")[0]: _number(float, spec.partition("=")[2], f"--error-rate {spec}")
            for spec in args.error_rate
        }
    patch.update({name: section for name, section in sections.items() if section})
    return config.merged(patch)


def _config_json(raw: str | None) -> dict[str, Any]:
    """``--config-json``: inline JSON or ``@path``; {} without it."""
    if not raw:
        return {}
    if raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as handle:
            raw = handle.read()
    try:
        document: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigValueError(f"--config-json: not valid JSON ({exc.msg})") from None
    return document


def _credentials(args: argparse.Namespace) -> dict[str, Any]:
    patch: dict[str, Any] = {} if args.api_key is None else {"api_key": args.api_key}
    if args.no_auth:
        patch.update(api_key=None, accept_bearer=False)
    elif args.no_bearer:
        patch["accept_bearer"] = False
    return patch


def _limits(args: argparse.Namespace, config: SimulatorConfig) -> dict[str, Any]:
    """``deployments`` from ``--deployment``, and ``default_limits`` for unlisted names."""
    limits = _set_flags(args, (("tpm", "tpm"), ("rpm", "rpm"), ("accounting", "accounting")))
    patch: dict[str, Any] = {}
    if args.deployment:
        deployments: dict[str, Any] = {}
        for spec in args.deployment:
            name, _, value = spec.partition("=")
            tpm, _, accounting = value.partition(":")
            entry = dict(limits)
            if tpm:
                entry["tpm"] = _number(int, tpm, f"--deployment {spec}")
            if accounting:
                entry["accounting"] = accounting
            entry.setdefault("tpm", 210_000)
            deployments[name] = entry
        patch["deployments"] = deployments
    if {"tpm", "rpm"} & set(limits) or not (
        args.deployment or config.deployments or config.default_limits
    ):
        # --tpm also covers every deployment not listed; list deployments without --tpm to
        # get 404 DeploymentNotFound for the others.
        patch["default_limits"] = {"tpm": 210_000, **limits}
    return patch


def _set_flags(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {key: getattr(args, dest) for key, dest in flags if getattr(args, dest) is not None}


def _number(kind: type[int] | type[float], text: str, where: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigValueError(f"{where}: {text!r} is not {what}") from None


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    simulator = await start_simulator(config, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(simulator.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        admin_key = os.environ.get(ADMIN_KEY_ENV) or config.admin_key
        if admin_key is None:
            admin_key = secrets.token_urlsafe(32)
            print(f"simulator: admin key for this run: {admin_key}", file=sys.stderr)
        config = config.merged({"admin_key": admin_key})
    except (ConfigValueError, OSError) as exc:
        print(f"simulator: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the simulator is meant for loopback only", args.host)
    # Started by a devhost: stop (SIGTERM) when that host dies, however it dies.
    die_with_parent(grace_s=10.0)
    asyncio.run(serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
