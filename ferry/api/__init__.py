"""The HTTP layer: schemas, thin routes, the error handler."""
