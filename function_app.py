"""The Switchboard Function App: registers the blueprints, nothing else."""

import azure.functions as func

from functions.agents import bp as agents
from functions.escalations import bp as escalations
from functions.http_api import bp as http_api
from functions.ingest import bp as ingest
from functions.requests_api import bp as requests_api

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingest)
app.register_functions(agents)
app.register_functions(http_api)
app.register_functions(escalations)
app.register_functions(requests_api)
