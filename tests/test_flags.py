"""``ferry serve --help`` reads like llama-server's: flags in groups, each with a metavar naming its
value and its real default, no settings-library internals; the README's table is the same data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.cli import _parse
from ferry.flags import flags, markdown, replace_table
from ferry.settings import GROUPS, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def help_text() -> str:
    r = subprocess.run([sys.executable, "-m", "ferry", "serve", "--help"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def entries(text: str) -> dict[str, str]:
    """Each flag's help entry (flag line plus wrapped help), whitespace collapsed."""
    body = text.split("\noptions:", 1)[1]
    out: dict[str, str] = {}
    for m in re.finditer(r"^  (--[a-z-]+)(.*?)(?=^  -|^\S|\Z)", body, re.MULTILINE | re.DOTALL):
        out[m.group(1)] = " ".join((m.group(1) + m.group(2)).split())
    return out


@pytest.mark.parametrize("internal", ["list[", "{str,null}", "<lambda>", "--no-no-",
                                      "default factory", "null", "Settings."])
def test_help_shows_no_settings_library_internals(help_text, internal):
    assert internal not in help_text


def test_every_flag_shows_a_metavar_and_its_default(help_text):
    shown = entries(help_text)
    assert len(shown) == len(Settings.model_fields)
    for f in flags():
        entry = shown[f.flag]
        if f.metavar is None:  # an on/off switch: both spellings, no value
            assert entry.startswith(f"{f.flag}, --no-{f.flag[2:]} "), entry
        else:
            assert re.fullmatch(r"[A-Z]+|\{[a-z0-9_,-]+\}", f.metavar), f.metavar
            assert entry.startswith(f"{f.flag} {f.metavar} "), entry
        assert entry.endswith(f"(default: {f.default})"), entry


def test_help_groups_flags_like_llama_server(help_text):
    titles = re.findall(r"^([a-z]+):$", help_text, re.MULTILINE)
    assert titles == ["options", "server", "models", "engine", "hardware", "streams", "limits",
                      "security", "ray"]
    assert {g.group for g in GROUPS} == {f.group for f in flags()}
    section = help_text.split("\nengine:\n", 1)[1].split("\nstreams:\n", 1)[0]
    assert "--parallel N" in section and "--batch-size N" in section


@pytest.mark.parametrize(("field", "shown"), [
    ("threads", "the number of CPUs"), ("batch_size", "512"), ("queue_timeout", "600"),
    ("max_image_bytes", "8388608 = 8 MiB"), ("ui", "--ui"), ("cors_origins", "*"),
    ("allow_image_urls", "--no-allow-image-urls"), ("speculative", "none"),
])
def test_defaults_are_the_values_a_person_reads(field, shown):
    assert {f.field: f.default for f in flags()}[field] == shown


def test_switches_and_repeatable_flags_parse():
    s = _parse(Settings, ["--no-ui", "--model", "a.gguf", "--model", "b=b.gguf",
                          "--api-key", "k1", "--api-key", "k2", "--allow-image-urls"])
    assert s.ui is False and s.allow_image_urls is True
    assert s.model == ["a.gguf", "b=b.gguf"] and s.api_key == ["k1", "k2"]
    assert _parse(Settings, ["--ui"]).ui is True
    assert _parse(Settings, []).ui is True


def test_an_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        _parse(Settings, ["--no-such-flag", "1"])
    assert e.value.code == 2


def test_readme_flag_table_is_generated_from_the_settings():
    text = README.read_text()
    assert replace_table(text) == text, "run: python -m ferry.flags --write README.md"
    assert "| `--parallel N` | 8 |" in markdown()
