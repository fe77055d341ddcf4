"""devhost: the embedded local runtime that runs ``function_app.py`` with no cloud."""
