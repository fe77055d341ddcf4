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


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the flags describe; ConfigValueError names a bad one."""
    base: dict[str, Any] = {}
    if args.config_json:
        raw = args.config_json
        if raw.startswith("@"):
            with open(raw[1:], encoding="utf-8") as handle:
                raw = handle.read()
        try:
            base = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigValueError(f"--config-json: not valid JSON ({exc.msg})") from None
    config = SimulatorConfig.from_dict(base)
    patch: dict[str, Any] = {}
    if args.api_key is not None:
        patch["api_key"] = args.api_key
    if args.no_auth:
        patch["api_key"] = None
        patch["accept_bearer"] = False
    elif args.no_bearer:
        patch["accept_bearer"] = False
    if args.seed is not None:
        patch["seed"] = args.seed
    limits: dict[str, Any] = {}
    if args.tpm is not None:
        limits["tpm"] = args.tpm
    if args.rpm is not None:
        limits["rpm"] = args.rpm
    if args.accounting is not None:
        limits["accounting"] = args.accounting
    if args.deployment:
        deployments: dict[str, Any] = {}
        for spec in args.deployment:
            name, _, value = spec.partition("=")
            tpm, _, accounting = value.partition(":")
            entry = dict(limits)
            if tpm:
                entry["tpm"] = _int(tpm, f"--deployment {spec}")
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
    latency = {
        key: value
        for key, value in (
            ("fixed_ms", args.latency_ms),
            ("ttft_ms", args.ttft_ms),
            ("per_token_ms", args.per_token_ms),
            ("jitter", args.jitter),
        )
        if value is not None
    }
    if latency:
        patch["latency"] = latency
    faults: dict[str, Any] = {
        key: value
        for key, value in (
            ("timeout_rate", args.timeout_rate),
            ("timeout_s", args.timeout_s),
            ("malformed_json_rate", args.malformed_rate),
            ("schema_violation_rate", args.schema_rate),
            ("content_filter_rate", args.content_filter_rate),
        )
        if value is not None
    }
    if args.error_rate:
        rates: dict[str, float] = {}
        for spec in args.error_rate:
            status, _, rate = spec.partition("=")
            rates[status] = _float(rate, f"--error-rate {spec}")
        faults["error_rates"] = rates
    if faults:
        patch["faults"] = faults
    return config.merged(patch)


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigValueError(f"{where}: {text!r} is not an integer") from None


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigValueError(f"{where}: {text!r} is not a number") from None


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
