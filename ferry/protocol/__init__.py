"""Request and response models of each API, below the services that consume them.

One module per API (``openai``; Responses and Anthropic Messages get their own). The services,
the engine and the vision code import these; none of them imports ``ferry.api`` (the HTTP layer),
which ``tests/test_layers.py`` checks by walking the imports.
"""
