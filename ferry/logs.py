"""Log output: text lines, or with ``--log-format json`` one JSON object per line.

A record's ``extra`` fields (the access log's ``request_id``, ``method``, ``path``, ``status``,
``duration_ms``) become keys of its JSON object, so request logs can be queried without parsing
messages.
"""

from __future__ import annotations

import json
import logging
import time

# attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        doc |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Root logging for ``ferry serve``: text (the default) or JSON lines on stderr."""
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # a line per hub request (huggingface_hub's client)
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
