"""azd postdeploy hook: subscribe the batch blob trigger to BlobCreated events.

The blob trigger runs with ``source="EventGrid"`` (the only blob trigger Flex Consumption
offers). Event Grid delivers to the blob extension's webhook, whose URL carries the host's
``blobs_extension`` system key. That key exists only once the deployed code has started, which is
after ``azd provision``; so the subscription is made here, after ``azd deploy``, rather than in
Bicep. The hook is idempotent (an ARM PUT), so every ``azd deploy`` re-asserts the subscription
and picks up a rotated key.

It needs the Azure CLI signed in to the same tenant (``az login``) and reads azd's environment:
``AZURE_SUBSCRIPTION_ID`` plus the outputs of ``infra/main.bicep``. It talks to ARM through
``az rest`` and never prints the key.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

logger = logging.getLogger(__name__)

NAMES_FILE = Path(__file__).resolve().parents[1] / "names.json"
WEB_API_VERSION = "2024-04-01"
EVENTGRID_API_VERSION = "2025-02-15"
REQUIRED_ENV = (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_APP_NAME",
    "AZURE_FUNCTION_APP_HOSTNAME",
    "AZURE_EVENTGRID_SYSTEM_TOPIC_NAME",
    "AZURE_BATCH_STORAGE_ACCOUNT_ID",
)

# Query parameters that carry credentials in URLs an error message might echo.
_CREDENTIAL_PARAMETER = re.compile(r"(?i)\b(code|sig|key)=[^&\s\"']+")

Runner = Callable[[Sequence[str]], str]
"""Runs a command line and returns its standard output; raises ``CommandFailed`` on failure."""


class HookError(Exception):
    """The hook cannot do its job; the message says what to fix."""


class CommandFailed(HookError):
    """An ``az`` command exited non-zero."""


@dataclass(frozen=True)
class Target:
    """Where the subscription goes and what it listens to."""

    subscription_id: str
    resource_group: str
    function_app: str
    hostname: str
    system_topic: str
    storage_account_id: str
    function_name: str
    container: str
    dead_letter_container: str
    subscription_name: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], names: Mapping[str, Any]) -> Target:
        """Read the azd outputs and ``infra/names.json``; name every missing value at once."""
        missing = [key for key in REQUIRED_ENV if not env.get(key, "").strip()]
        if missing:
            raise HookError(
                "missing azd environment values: "
                + ", ".join(missing)
                + " (run 'azd provision' first, or 'azd env refresh')"
            )
        return cls(
            subscription_id=env["AZURE_SUBSCRIPTION_ID"].strip(),
            resource_group=env["AZURE_RESOURCE_GROUP"].strip(),
            function_app=env["AZURE_FUNCTION_APP_NAME"].strip(),
            hostname=env["AZURE_FUNCTION_APP_HOSTNAME"].strip(),
            system_topic=env["AZURE_EVENTGRID_SYSTEM_TOPIC_NAME"].strip(),
            storage_account_id=env["AZURE_BATCH_STORAGE_ACCOUNT_ID"].strip(),
            function_name=names["functions"]["batchIngest"],
            container=names["storage"]["batchContainer"],
            dead_letter_container=names["storage"]["eventGridDeadLetterContainer"],
            subscription_name=names["functions"]["batchSubscription"],
        )

    @property
    def host_keys_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Web/sites/{self.function_app}/host/default/listkeys"
            f"?api-version={WEB_API_VERSION}"
        )

    @property
    def subscription_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.EventGrid/systemTopics/{self.system_topic}"
            f"/eventSubscriptions/{self.subscription_name}?api-version={EVENTGRID_API_VERSION}"
        )


def webhook_url(hostname: str, function_name: str, key: str) -> str:
    """The blob extension's webhook for one function, as the Functions host documents it."""
    return (
        f"https://{hostname}/runtime/webhooks/blobs"
        f"?functionName=Host.Functions.{quote(function_name, safe='')}&code={quote(key, safe='')}"
    )


def subscription_body(target: Target, endpoint_url: str) -> dict[str, Any]:
    """The ARM body of the event subscription: BlobCreated under the batches container only."""
    return {
        "properties": {
            "destination": {
                "endpointType": "WebHook",
                "properties": {
                    "endpointUrl": endpoint_url,
                    # One blob per delivery: each invocation handles one batch file.
                    "maxEventsPerBatch": 1,
                    "preferredBatchSizeInKilobytes": 64,
                },
            },
            "filter": {
                "includedEventTypes": ["Microsoft.Storage.BlobCreated"],
                "subjectBeginsWith": f"/blobServices/default/containers/{target.container}/",
                "isSubjectCaseSensitive": False,
            },
            "eventDeliverySchema": "EventGridSchema",
            "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
            # An event that still cannot be delivered is kept, so no uploaded batch is lost.
            "deadLetterWithResourceIdentity": {
                "identity": {"type": "SystemAssigned"},
                "deadLetterDestination": {
                    "endpointType": "StorageBlob",
                    "properties": {
                        "resourceId": target.storage_account_id,
                        "blobContainerName": target.dead_letter_container,
                    },
                },
            },
        }
    }


def redact(text: str) -> str:
    """``text`` with the values of credential-bearing URL parameters masked."""
    return _CREDENTIAL_PARAMETER.sub(lambda match: f"{match.group(1)}=***", text)


def run_az(args: Sequence[str]) -> str:
    """Run the Azure CLI; a failure is reported by its last stderr line, credentials masked."""
    try:
        completed = subprocess.run(
            ["az", *args], capture_output=True, text=True, check=False, timeout=300
        )
    except FileNotFoundError:
        raise HookError("the Azure CLI ('az') is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"'az {args[0]}' timed out") from None
    if completed.returncode != 0:
        reason = completed.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise CommandFailed(f"'az {args[0]}' failed: {redact(reason[0])}")
    return completed.stdout


def fetch_blobs_extension_key(
    target: Target,
    run: Runner,
    *,
    attempts: int = 10,
    delay_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The ``blobs_extension`` system key, waiting for the host to create it after a deploy."""
    for attempt in range(1, attempts + 1):
        try:
            keys = json.loads(run(["rest", "--method", "post", "--url", target.host_keys_path]))
        except (CommandFailed, json.JSONDecodeError) as exc:
            logger.info("host keys not readable yet (attempt %d/%d): %s", attempt, attempts, exc)
        else:
            key = (keys.get("systemKeys") or {}).get("blobs_extension")
            if isinstance(key, str) and key:
                return key
            logger.info("blobs_extension key not created yet (attempt %d/%d)", attempt, attempts)
        if attempt < attempts:
            sleep(delay_s)
    raise HookError(
        f"no blobs_extension key on {target.function_app}: the host creates it when a blob "
        "trigger with source EventGrid starts; check the deployment and run 'azd deploy' again"
    )


def put_subscription(
    target: Target,
    body: Mapping[str, Any],
    run: Runner,
    *,
    attempts: int = 5,
    delay_s: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Create or update the subscription, retrying while Event Grid's endpoint validation fails
    (a cold instance may miss the validation handshake)."""
    descriptor, path = tempfile.mkstemp(prefix="eventgrid-", suffix=".json")
    try:
        # The body holds the key: it travels in a private file, never on the command line.
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
        for attempt in range(1, attempts + 1):
            try:
                run(
                    [
                        "rest",
                        "--method",
                        "put",
                        "--url",
                        target.subscription_path,
                        "--body",
                        f"@{path}",
                    ]
                )
                return
            except CommandFailed as exc:
                logger.info(
                    "subscription not accepted yet (attempt %d/%d): %s", attempt, attempts, exc
                )
                if attempt == attempts:
                    raise
                sleep(delay_s)
    finally:
        Path(path).unlink(missing_ok=True)


def ensure_subscription(
    env: Mapping[str, str],
    names: Mapping[str, Any],
    run: Runner = run_az,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Target:
    """Point the batches container's BlobCreated events at the deployed blob trigger."""
    target = Target.from_env(env, names)
    key = fetch_blobs_extension_key(target, run, sleep=sleep)
    body = subscription_body(target, webhook_url(target.hostname, target.function_name, key))
    put_subscription(target, body, run, sleep=sleep)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="postdeploy: %(message)s")
    try:
        names = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
        target = ensure_subscription(os.environ, names)
    except HookError as exc:
        logger.error("%s", exc)
        return 1
    logger.info(
        "event subscription %s on %s delivers BlobCreated under %s/ to %s",
        target.subscription_name,
        target.system_topic,
        target.container,
        target.function_name,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
