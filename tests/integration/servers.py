"""Start and stop the real local servers the integration tests talk to.

Azurite (Blob) and ``@vercel/cosmosdb-server`` (Cosmos DB) come from npm, pinned in
``tools/package.json``. Each runs as a child process bound to 127.0.0.1 on a port the OS picks
(port 0: the server prints the port it got, so no two test runs race for one), with its output in
files so a server that fails to start is reported with its own words.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.core.credentials import AzureNamedKeyCredential

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"
NODE_BIN = TOOLS_DIR / "node_modules" / ".bin"
COSMOS_PACKAGE = TOOLS_DIR / "node_modules" / "@vercel" / "cosmosdb-server"

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
# Azurite's published development account key. It is a public constant of the emulator (the key
# behind `UseDevelopmentStorage=true`), the same on every machine, and opens nothing but a local
# Azurite; it is not a secret.
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

_AZURITE_READY = re.compile(r"successfully listens on https?://127\.0\.0\.1:(\d+)")
_COSMOS_READY = re.compile(r"cosmosdb-server listening on 127\.0\.0\.1:(\d+)")

# The package's own CLI always serves the certificate shipped inside the package; this launcher
# serves the one made for this test run instead, and binds loopback on a port the OS picks.
#
# It also corrects one deviation of cosmosdb-server 1.0.1 from Cosmos DB: reading an item that
# does not exist crashes its read handler (it inspects the missing item's partition key) and
# answers 500, where Cosmos DB answers 404 NotFound. The shim answers 404 for exactly that case
# and leaves every other request to the package's own handler.
_COSMOS_LAUNCHER = """
const fs = require("fs");
const path = require("path");
const [pkg, certFile, keyFile] = process.argv.slice(2);

const readDocument = require(path.join(pkg, "lib", "handler", "read-document"));
const header = require(path.join(pkg, "lib", "utils", "get-partition-from-header"));
const readExisting = readDocument.default;
readDocument.default = (account, req, res, params) => {
  const collection = account.database(params.dbId).collection(params.collId);
  if (collection.read()) {
    const key = header.parsePartitionKey(header.default(req), params.docId);
    if (!collection.document(params.docId, key).read()) {
      res.statusCode = 404;
      return {
        code: "NotFound",
        message: "Entity with the specified id does not exist in the system.",
      };
    }
  }
  return readExisting(account, req, res, params);
};

const { createHttpsServer } = require(pkg);
const server = createHttpsServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
});
server.listen(0, "127.0.0.1", () => {
  console.log(`cosmosdb-server listening on 127.0.0.1:${server.address().port}`);
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
"""


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries its output."""


def ensure_node_modules() -> None:
    """Install the pinned npm tools into ``tools/node_modules`` unless they are there already."""
    wanted = (NODE_BIN / "azurite-blob", COSMOS_PACKAGE / "package.json")
    if all(path.exists() for path in wanted):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServerStartError(
            "npm is not installed: the integration tests need Node.js >= 20 and npm to install "
            "Azurite and @vercel/cosmosdb-server into tools/node_modules"
        )
    has_lock = (TOOLS_DIR / "package-lock.json").exists()
    command = [npm, "ci" if has_lock else "install", "--prefix", str(TOOLS_DIR)]
    command += ["--no-audit", "--no-fund"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0 or not all(path.exists() for path in wanted):
        raise ServerStartError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


class ServerProcess:
    """A child server process whose output goes to files, stopped by ``stop()``."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self._stdout_path = workdir / f"{name}.stdout.log"
        self._stderr_path = workdir / f"{name}.stderr.log"
        with self._stdout_path.open("wb") as out, self._stderr_path.open("wb") as err:
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    def output(self) -> str:
        """Everything the server has printed so far, stdout then stderr."""
        out = self._stdout_path.read_text(errors="replace")
        err = self._stderr_path.read_text(errors="replace")
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def wait_for_port(self, ready: re.Pattern[str], timeout_s: float = START_TIMEOUT_S) -> int:
        """Wait for the line that announces the listening port and return the port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = ready.search(self._stdout_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self._process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self._process.returncode} before it was "
                    f"ready:\n{self.output()}"
                )
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"{self.name} was not ready within {timeout_s:.0f}s:\n{self.output()}"
        )

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it lingers."""
        if self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=STOP_TIMEOUT_S)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the server if the test run itself is killed (no orphans)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise ServerStartError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class AzuriteBlob:
    """A running Azurite Blob service."""

    account_url: str
    account_name: str
    credential: AzureNamedKeyCredential
    process: ServerProcess

    @property
    def connection_string(self) -> str:
        """A connection string for code that takes one (the functions host's convention)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={self.account_url};"
        )


def start_azurite_blob(workdir: Path) -> AzuriteBlob:
    """Start Azurite's Blob service on 127.0.0.1 with its data under ``workdir``."""
    ensure_node_modules()
    data = workdir / "azurite-data"
    data.mkdir(parents=True, exist_ok=True)
    command = [
        str(NODE_BIN / "azurite-blob"),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "0",
        "--location",
        str(data),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
        "--disableTelemetry",
    ]
    process = ServerProcess("azurite-blob", command, workdir)
    port = process.wait_for_port(_AZURITE_READY)
    wait_until(lambda: _accepts(port), timeout_s=START_TIMEOUT_S, what="Azurite to accept")
    return AzuriteBlob(
        account_url=f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT_NAME}",
        account_name=AZURITE_ACCOUNT_NAME,
        credential=AzureNamedKeyCredential(AZURITE_ACCOUNT_NAME, AZURITE_ACCOUNT_KEY),
        process=process,
    )


@dataclass
class CosmosServer:
    """A running ``@vercel/cosmosdb-server`` serving HTTPS with a certificate made at start."""

    endpoint: str
    key: str
    cert_file: Path
    process: ServerProcess


def start_cosmos_server(workdir: Path) -> CosmosServer:
    """Start ``@vercel/cosmosdb-server`` on 127.0.0.1 with a fresh self-signed certificate.

    The server accepts any key (it checks no signatures), so the key is random per run; clients
    must pass ``connection_verify=False`` because the certificate is self-signed.
    """
    ensure_node_modules()
    node = shutil.which("node")
    if node is None:
        raise ServerStartError("node is not installed: @vercel/cosmosdb-server needs Node.js >= 20")
    workdir.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = write_self_signed_cert(workdir)
    launcher = workdir / "cosmosdb-launcher.js"
    launcher.write_text(_COSMOS_LAUNCHER)
    command = [node, str(launcher), str(COSMOS_PACKAGE), str(cert_file), str(key_file)]
    process = ServerProcess("cosmosdb-server", command, workdir)
    port = process.wait_for_port(_COSMOS_READY)
    wait_until(lambda: _accepts(port), timeout_s=START_TIMEOUT_S, what="cosmosdb-server to accept")
    return CosmosServer(
        endpoint=f"https://127.0.0.1:{port}/",
        key=base64.b64encode(secrets.token_bytes(64)).decode("ascii"),
        cert_file=cert_file,
        process=process,
    )


def write_self_signed_cert(workdir: Path) -> tuple[Path, Path]:
    """Write a one-day self-signed certificate for 127.0.0.1/localhost; return (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = workdir / "cosmos-cert.pem"
    key_file = workdir / "cosmos-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file
