"""The HTTP layer: thin routes, their dependencies (deps.py), middleware, the error handler."""
