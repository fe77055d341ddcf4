"""Adapters: the ports' implementations. ``azure/`` holds the cloud ones (the only modules that
import Azure SDKs or openai), ``local/`` the SQLite ones devhost and the tests use. Importing a
module connects to nothing: each adapter makes its client on first use and closes it in
``close()``. Only ``shared.bootstrap`` chooses and builds them.
"""
