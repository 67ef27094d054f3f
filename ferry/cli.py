"""``ferry serve`` (flags generated from ferry.settings.Settings) and ``ferry bench``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.settings import Settings

USAGE = """usage: ferry {serve,bench} [options]

  serve   serve the OpenAI-compatible API (ferry serve --help)
  bench   benchmark OpenAI-compatible servers (ferry bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from ferry.server import serve
        from ferry.settings import Settings

        return serve(_parse(Settings, rest))
    if cmd == "bench":
        from ferry.bench.cli import main as bench_main

        return bench_main(rest)
    print(USAGE, file=sys.stderr)
    return 2


def _parse(settings_cls: type[Settings], args: list[str]) -> Settings:
    import argparse

    from pydantic import ValidationError
    from pydantic_settings import CliSettingsSource

    from ferry.flags import add_argument

    source: CliSettingsSource[Any] = CliSettingsSource(
        settings_cls, cli_prog_name="ferry serve", cli_parse_args=args, cli_kebab_case=True,
        cli_implicit_flags=True, add_argument_method=add_argument,
        formatter_class=argparse.HelpFormatter)
    try:
        return settings_cls(_cli_settings_source=source(args=args))
    except ValidationError as e:  # a bad flag or env var: say which, no traceback
        for err in e.errors():
            where = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-") if err["loc"] else ""
            print(f"ferry serve: error: {where} {err['msg']}".replace("  ", " "), file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    raise SystemExit(main())
