"""Signalbox's function app plus the ops page, for tests/integration/test_ops_page.py.

A blueprint can be registered into one app only, once per process, and the host process
imports just this module (``--app tests.apps.ops_page_app:app``), so this composes its own
``FunctionApp`` with the blueprints of ``function_app`` and the ops page's.
"""

import azure.functions as func

from functions import approvals, ingress, ops_page, pipeline

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingress.bp)
app.register_functions(pipeline.bp)
app.register_functions(approvals.bp)
app.register_functions(ops_page.bp)
