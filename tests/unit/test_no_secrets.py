"""No credential is committed, and the infrastructure is built so that none is needed.

The scan covers every file git tracks or would track (untracked but not ignored), so a secret is
caught before its first commit. The detectors are tested on credentials made up at run time; this
file holds no literal credential, not even a fake one, so it passes its own scan.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.consistency import InfraModel  # noqa: E402
from tests.support.hooks import load_postdeploy_hook  # noqa: E402

INFRA = REPO / "infra"
MAX_SCANNED_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class Detector:
    """One kind of credential: a name for reports and a pattern whose group 1 is the value."""

    kind: str
    pattern: re.Pattern[str]


# Each pattern needs a value of credential length after its marker, so prose that merely names a
# marker (documentation, these patterns' own source) does not match.
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "key in a connection string",
        re.compile(r"(?i)\b(?:Account|SharedAccess)Key\s*=\s*([A-Za-z0-9+/]{20,}={0,2})"),
    ),
    Detector(
        "SAS token signature",
        re.compile(r"(?i)(?:[?&;\s\"']|^)sig=([A-Za-z0-9%+/]{20,}(?:%3D|=){0,2})"),
    ),
    Detector(
        "private key block",
        re.compile(
            r"(-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----)"
        ),
    ),
    Detector(
        "password assignment",
        re.compile(
            r"(?i)(?<![a-z])(?:password|passwd|pwd)[\"']?\s*[:=]\s*[\"']([^\"'\s<>{}$%]{6,})[\"']"
        ),
    ),
    Detector(
        "password in a connection string",
        re.compile(r"(?i)(?<![a-z])password=([^;\"'\s<>{}$%]{6,})"),
    ),
    Detector(
        "key listed in a template (listKeys and friends)",
        re.compile(r"(?i)\b(list(?:Keys|ConnectionStrings|AccountSas|ServiceSas))\s*\("),
    ),
    Detector(
        "512-bit base64 key (storage, Service Bus, Cosmos DB)",
        re.compile(r"(?<![A-Za-z0-9+/\-])([A-Za-z0-9+/]{86}==)(?![A-Za-z0-9+/=])"),
    ),
    Detector(
        "Entra ID client secret",
        re.compile(
            r"(?<![A-Za-z0-9_~.\-])([A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?![A-Za-z0-9_~.\-])"
        ),
    ),
    Detector(
        "OpenAI API key",
        re.compile(r"\b(sk-(?:proj-)?[A-Za-z0-9_\-]{32,})"),
    ),
)

# The Azurite storage emulator's account key is published in its documentation and is the same on
# every machine; the integration tests need it to talk to Azurite. It is kept here hex-encoded so
# this file does not contain it in a form the scan would report.
AZURITE_PUBLISHED_KEY = bytes.fromhex(
    "4562793876644d3032784e4f6371466c7155774a504c6c6d45746c4344584a314f557a465435307553525a36"
    "4946737546713255564572437a34493674712f4b31535a4650544f74722f4b424842656b736f474d47773d3d"
).decode()

ALLOWED: dict[str, tuple[str, str]] = {
    "tests/integration/servers.py": (
        AZURITE_PUBLISHED_KEY,
        "the Azurite emulator's published development key, needed to reach Azurite on loopback",
    ),
    "tests/data/requests/bad.jsonl": (
        base64.b64encode(
            b'{"customerId":"cust-10482","text":"thanks \xf0\x9f\x98","channel":"chat"}'
        ).decode(),
        "a request body cut inside a four-byte emoji, stored as base64 since it is not UTF-8",
    ),
}
"""Path -> (the one published value allowed there, why). Any other finding in that file counts."""


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    value: str

    def __str__(self) -> str:
        shown = self.value[:6] + "..." if len(self.value) > 6 else self.value
        return f"{self.path}:{self.line}: {self.kind} ({shown})"


def scan_text(path: str, text: str) -> list[Finding]:
    """Every credential-shaped value in ``text``, minus the published value allowed at ``path``."""
    allowed = ALLOWED.get(path, ("", ""))[0]
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for detector in DETECTORS:
            for match in detector.pattern.finditer(line):
                value = match.group(1)
                # A published value may be split across string literals; any part of it is fine.
                if allowed and len(value) >= 16 and value.rstrip("=") in allowed:
                    continue
                findings.append(Finding(path, number, detector.kind, value))
    return findings


def repository_files() -> Iterator[tuple[str, str]]:
    """``(path, text)`` of every text file git tracks or would track."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in sorted(filter(None, listed.split("\0"))):
        path = REPO / relative
        if not path.is_file() or path.stat().st_size > MAX_SCANNED_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        yield relative, data.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# The repository
# ----------------------------------------------------------------------------------------------


def test_no_file_in_the_repository_holds_a_credential() -> None:
    scanned = 0
    findings: list[Finding] = []
    for path, text in repository_files():
        scanned += 1
        findings.extend(scan_text(path, text))
    assert scanned > 10
    assert findings == [], "\n".join(str(finding) for finding in findings)


def test_every_allowlist_entry_is_a_relative_path_with_one_value_and_a_reason() -> None:
    for path, (value, reason) in ALLOWED.items():
        assert not Path(path).is_absolute()
        assert len(value) >= 16
        assert len(reason) > 20


# ----------------------------------------------------------------------------------------------
# The detectors, on credentials made up here
# ----------------------------------------------------------------------------------------------


def _made_up_key(size: int = 64) -> str:
    return base64.b64encode(os.urandom(size)).decode()


def _joined(*parts: str) -> str:
    """Strings are assembled at run time so this file never contains them whole."""
    return "".join(parts)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (
            _joined("DefaultEndpointsProtocol=https;AccountName=x;Account", "Key=", _made_up_key()),
            "connection string",
        ),
        (
            _joined(
                "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=r;SharedAccess",
                "Key=",
                _made_up_key(32),
            ),
            "connection string",
        ),
        (
            _joined(
                "https://x.blob.core.windows.net/c/b?sv=2022-11-02&se=2030&s",
                "ig=",
                "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U%3D",
            ),
            "SAS",
        ),
        (_joined("-----BEGIN ", "RSA PRIVATE KEY-----"), "private key"),
        (_joined("db_pass", 'word = "', "Tr0ub4dor&3", '"'), "password assignment"),
        (
            _joined("Server=x;User Id=u;Pass", "word=", "Tr0ub4dor&3;"),
            "password in a connection string",
        ),
        (_joined("key: list", "Keys(storage.id, '2023-01-01').keys[0].value"), "listKeys"),
        (_joined("key = '", _made_up_key(), "'"), "512-bit"),
        (_joined("AZURE_CLIENT_SECRET=abc", "8Q~", "a" * 34), "client secret"),
        (_joined("OPENAI_API_KEY=s", "k-", "A" * 40), "OpenAI"),
    ],
)
def test_each_kind_of_credential_is_detected(line: str, kind: str) -> None:
    findings = scan_text("anywhere.py", line)
    assert any(kind.lower() in finding.kind.lower() for finding in findings), findings


@pytest.mark.parametrize(
    "line",
    [
        '"integrity": "sha512-' + _made_up_key() + '"',
        "APPLICATIONINSIGHTS_CONNECTION_STRING=InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x/",
        "SECRET=@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/name/)",
        'password = "<your-password>"',
        "the connection string's AccountKey must never appear; use managed identity",
        "curl https://x/runtime/webhooks/blobs?functionName=Host.Functions.f&code=$KEY",
        "https://management.azure.com/.../host/default/listkeys?api-version=2024-04-01",
    ],
)
def test_ordinary_text_is_not_mistaken_for_a_credential(line: str) -> None:
    assert scan_text("anywhere.md", line) == []


def test_the_published_azurite_key_is_allowed_only_where_the_allowlist_says() -> None:
    line = _joined(
        'AZURITE = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;Account',
        "Key=",
        AZURITE_PUBLISHED_KEY,
        ';"',
    )
    assert scan_text("tests/integration/servers.py", line) == []
    assert scan_text("tests/integration/other.py", line) != []


def test_the_allowlist_forgives_the_published_key_split_across_literals_but_nothing_else() -> None:
    half = len(AZURITE_PUBLISHED_KEY) // 2
    split = [
        _joined('"Account', "Key=", AZURITE_PUBLISHED_KEY[:half], '"'),
        _joined('"', AZURITE_PUBLISHED_KEY[half:], ';"'),
    ]
    assert scan_text("tests/integration/servers.py", "\n".join(split)) == []
    other = _joined("Account", "Key=", _made_up_key())
    assert scan_text("tests/integration/servers.py", other) != []


# ----------------------------------------------------------------------------------------------
# The infrastructure needs no credential
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "setting", "value", "count"),
    [
        ("modules/servicebus.bicep", "disableLocalAuth", True, 1),
        ("modules/eventhubs.bicep", "disableLocalAuth", True, 1),
        ("modules/cosmos.bicep", "disableLocalAuth", True, 1),
        ("modules/openai.bicep", "disableLocalAuth", True, 1),
        ("modules/monitoring.bicep", "DisableLocalAuth", True, 1),
        ("modules/storage.bicep", "allowSharedKeyAccess", False, 1),
        ("modules/keyvault.bicep", "enableRbacAuthorization", True, 1),
        # Basic publishing credentials, once for SCM and once for FTP.
        ("modules/functionapp.bicep", "allow", False, 2),
    ],
)
def test_every_data_service_turns_key_authentication_off(
    module: str, setting: str, value: bool, count: int
) -> None:
    bicep = InfraModel.load(INFRA).modules[module]
    values = [bicep.evaluate(expression) for expression in bicep.property_values(setting)]
    assert values == [value] * count


def test_no_app_setting_carries_a_key_or_a_connection_string_with_one() -> None:
    settings = InfraModel.load(INFRA).app_settings
    credential_names = re.compile(
        r"(?i)(api_?key|access_?key|account_?key|password|secret|sas_?token|connection_?string)"
    )
    suspicious = {name for name in settings if credential_names.search(name)}
    # Application Insights' connection string names an endpoint; with local auth off it grants
    # nothing, and APPLICATIONINSIGHTS_AUTHENTICATION_STRING makes the exporter use the identity.
    assert suspicious == {"APPLICATIONINSIGHTS_CONNECTION_STRING"}
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    credentials = {name for name, value in settings.items() if name.endswith("__credential")}
    assert credentials
    assert all(settings[name] == "'managedidentity'" for name in credentials)


def test_no_template_outputs_a_secure_value() -> None:
    for path in sorted(INFRA.rglob("*.bicep")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"@secure\(\)\s*\n\s*output", text), path


_FAKE_AZ = """\
#!{python}
import json, sys
from pathlib import Path

state = Path({state!r})
args = sys.argv[1:]
with (state / "commands.jsonl").open("a", encoding="utf-8") as log:
    log.write(json.dumps(args) + "\\n")
if "post" in args:
    key = (state / "key").read_text(encoding="utf-8")
    print(json.dumps({{"systemKeys": {{"blobs_extension": key}}}}))
elif "put" in args:
    body = Path(args[args.index("--body") + 1].removeprefix("@")).read_text(encoding="utf-8")
    url = json.loads(body)["properties"]["destination"]["properties"]["endpointUrl"]
    echoed = state / "echoed"
    if not echoed.exists():
        # What the CLI prints when Event Grid's handshake fails: the endpoint URL, key and all.
        echoed.write_text(url, encoding="utf-8")
        print("WARNING: validating the endpoint", file=sys.stderr)
        print(f"ERROR: Webhook validation handshake failed for {{url}}", file=sys.stderr)
        sys.exit(1)
    print("{{}}")
"""


def _install_fake_az(directory: Path, key: str) -> Path:
    """An executable ``az`` in ``directory`` that hands out ``key`` and fails the first PUT
    with the key-bearing webhook URL on stderr; returns the folder where it records its calls."""
    state = directory / "az-state"
    state.mkdir()
    (state / "key").write_text(key, encoding="utf-8")
    script = directory / "bin" / "az"
    script.parent.mkdir()
    script.write_text(_FAKE_AZ.format(python=sys.executable, state=str(state)), encoding="utf-8")
    script.chmod(0o755)
    return state


def test_the_postdeploy_hook_never_logs_or_passes_the_webhook_key_on_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hook = load_postdeploy_hook()
    key = os.urandom(24).hex()  # URL-safe, so the webhook URL carries it verbatim
    state = _install_fake_az(tmp_path, key)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env = {name: f"v-{name.lower()}" for name in hook.REQUIRED_ENV}
    names: dict[str, Any] = json.loads((INFRA / "names.json").read_text(encoding="utf-8"))
    caplog.set_level(logging.DEBUG)

    hook.ensure_subscription(env, names, hook.run_az, sleep=lambda _: None)

    commands = [json.loads(line) for line in (state / "commands.jsonl").read_text().splitlines()]
    puts = [command for command in commands if "put" in command]
    assert len(puts) == 2  # the first was refused, the retry accepted
    assert all(key not in " ".join(command) for command in commands)
    body_files = {Path(command[command.index("--body") + 1].removeprefix("@")) for command in puts}
    assert not any(path.exists() for path in body_files)  # the key's file is gone
    assert f"code={key}" in (state / "echoed").read_text()  # az did print the key
    assert key not in caplog.text
    assert "code=***" in caplog.text
