"""``ferry bench``: a streaming benchmark client for any OpenAI-compatible server.

Modules: ``stats`` (pure numbers), ``client`` (one level of concurrent streaming requests against one
URL), ``peers`` (start/stop the servers we compare against), ``report`` (table and JSON), ``cli``.
"""
