"""Signalbox's Azure Functions app: the blueprints, composed. Nothing else lives here."""

import azure.functions as func

from functions import approvals, ingress, operations, operator, ops_page, pipeline, reconcile

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingress.bp)
app.register_functions(pipeline.bp)
app.register_functions(approvals.bp)
app.register_functions(ops_page.bp)
app.register_functions(operations.bp)
app.register_functions(operator.bp)
app.register_functions(reconcile.bp)
