"""Run in a fresh interpreter: import what the worker template imports, build the app's chat
model against a running endpoint, make one call, and print (JSON) the modules that call imported.

    python -m tests.support.first_call_probe <endpoint-url> <api-key> <deployment> <workdir>
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path

from devhost.prefork import WARM_IMPORTS


def main(url: str, key: str, deployment: str, workdir: str) -> None:
    for module in WARM_IMPORTS:
        importlib.import_module(module)
    from shared.bootstrap import build_chat_model, load_settings
    from shared.ports import ChatRequest

    quota = Path(workdir) / "quota.sqlite3"
    settings = load_settings(
        {
            "AZURE_OPENAI_ENDPOINT": url,
            "AZURE_OPENAI_API_KEY": key,
            "LLM_DEPLOYMENT": deployment,
            "LLM_QUOTA_BACKEND": "sqlite",
            "LLM_QUOTA_SQLITE_PATH": str(quota),
            "STORE_BACKEND": "sqlite",
            "SQLITE_PATH": str(Path(workdir) / "store.sqlite3"),
        }
    )
    model = build_chat_model(settings)
    request = ChatRequest(
        stage="intent",
        messages=[{"role": "user", "content": "Where is my order?"}],
        schema_name="probe",
        json_schema=None,
        max_tokens=20,
    )
    before = set(sys.modules)
    asyncio.run(model.complete(request))
    print(json.dumps(sorted(set(sys.modules) - before)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
