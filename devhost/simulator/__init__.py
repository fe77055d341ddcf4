"""An Azure OpenAI chat-completions simulator on loopback, for devhost, tests and benchmarks.

Start it in-process::

    sim = await start_simulator(SimulatorConfig(deployments={"gpt-4o-mini": DeploymentLimits(
        tpm=210_000)}, latency=LatencyModel(fixed_ms=200)))
    ...  # sim.base_url == "http://127.0.0.1:<port>"
    await sim.stop()          # or: async with run_simulator(config) as sim: ...

or standalone: ``python -m devhost.simulator --port 8089 --tpm 210000 --latency-ms 200``.

Routes
======
* ``POST /openai/deployments/{deployment}/chat/completions?api-version=...`` (Azure form;
  without ``api-version`` -> 400 ``MissingApiVersionParameter``).
* ``POST /openai/v1/chat/completions`` and ``POST /v1/chat/completions`` (OpenAI form; the
  body's ``model`` names the deployment).
* ``GET /health``; admin (its own key, ``x-sim-admin-key: <admin_key>``; chat credentials
  never open it; 403 when the simulator has no admin key): ``GET /_sim/stats``,
  ``GET /_sim/config`` (api key masked), ``PUT /_sim/config`` (a partial ``to_dict()`` document:
  sections are merged field by field, ``deployments`` entries added/replaced, ``null`` removes
  one; credentials and the admin key cannot be changed), ``POST /_sim/reset`` (counters and
  rate windows).

Auth: ``api-key: <key>`` or ``Authorization: Bearer <token>``; see ``SimulatorConfig``. A failure
is 401 with ``{"error": {"code": "401", "message": ...}}``. An unknown deployment is 404
``DeploymentNotFound`` unless ``default_limits`` is set (then it is created on first use).

Every answer carries ``x-request-id`` and ``apim-request-id``; every answer about a known
deployment also carries the rate-limit headers below.

Rate limits (Azure semantics)
=============================
Per deployment, with ``TPM`` tokens per minute and ``RPM`` requests per minute (default
``RPM = 6 * TPM // 1000``, Azure's ratio):

* **Cost.** On arrival a request is charged an *estimate*, not its actual usage:
  ``prompt_tokens_estimate + max_tokens * n`` (``max_completion_tokens`` if that is the field
  sent; **4096** when neither is sent). The prompt estimate is ``tokens.estimate_prompt_tokens``
  and is exactly the ``usage.prompt_tokens`` reported. A cost larger than the token window's
  capacity is charged as the full capacity (it is admitted only into an empty window).
* **Windows.** Rolling windows over admitted requests, all of which must have room:
  tokens over **10 s** with capacity ``TPM // 6``; requests over **1 s** with capacity
  ``ceil(RPM / 60)``; requests over **10 s** with capacity ``ceil(RPM / 6)``. A charge leaves a
  window exactly ``window`` seconds after it was admitted.
* **429.** A request that does not fit is refused and **not charged**: HTTP 429, body
  ``{"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under
  Azure OpenAI API version <v> have exceeded token rate limit ... Please retry after <N>
  seconds. ..."}}`` ("call rate limit" when a request window is the binding one), and headers:

  - ``retry-after-ms``: the exact wait, in ms rounded up, until this same request would be
    admitted if nothing else arrived (the latest of the three windows' waits);
  - ``retry-after``: that wait in whole seconds, rounded up, at least 1;
  - ``x-ratelimit-remaining-requests`` / ``x-ratelimit-remaining-tokens`` as below.
* **Headers on every answer** about a deployment:

  - ``x-ratelimit-limit-requests`` = RPM, ``x-ratelimit-limit-tokens`` = TPM (per minute);
  - ``x-ratelimit-remaining-requests`` = requests that could be admitted *right now*
    (the smaller of the 1 s and 10 s windows' room);
  - ``x-ratelimit-remaining-tokens`` = tokens that could be admitted *right now* in the 10 s
    window (so at most ``TPM // 6``). On a 200 both are computed when the answer is sent, after
    this request's charge.

Faults
======
Random (``Faults`` rates, seeded) or per request with the header ``x-sim-fault``:
``429`` (a throttle answer with the headers above; ``retry-after-ms`` is the real wait or
1000 ms, whichever is longer; not charged), ``500``/``503``/any status 400-599 (Azure error body,
after the time to first token; charged), ``timeout`` (sleeps ``timeout_s`` then 408; the
client's timeout should fire first), ``malformed`` (content that is not JSON), ``schema`` (valid
JSON that breaks the requested schema: a required property dropped, else an invalid enum value),
``content_filter`` (HTTP 400 ``content_filter`` with ``innererror.code =
ResponsibleAIPolicyViolation``), ``content_filter_completion`` (HTTP 200, ``finish_reason =
"content_filter"``, empty JSON content or partial text), ``none`` (no random fault). Malformed and
schema faults apply only to JSON requests (``json_object``/``json_schema``).

Content
=======
See ``schema_gen`` for how values follow the text. Same body + same seed -> same content. A
critic-style ``approve/revise/escalate`` enum escalates on legal, fraud or anger signals, asks to
revise for ~15 % of drafts (by a hash of seed and draft), and never revises when the prompt says
it is the last chance: "final revision", "last allowed revision", "no more revisions",
"revisions left: 0", "revision 2 of 2", "do not request another revision".
"""

from __future__ import annotations

from devhost.simulator.config import (
    ConfigValueError,
    DeploymentLimits,
    Faults,
    LatencyModel,
    SimulatorConfig,
)
from devhost.simulator.server import RunningSimulator, create_app, run_simulator, start_simulator
from devhost.simulator.tokens import estimate_prompt_tokens

__all__ = [
    "ConfigValueError",
    "DeploymentLimits",
    "Faults",
    "LatencyModel",
    "RunningSimulator",
    "SimulatorConfig",
    "create_app",
    "estimate_prompt_tokens",
    "run_simulator",
    "start_simulator",
]
