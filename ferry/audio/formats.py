"""OpenAI's transcription response formats: json, text, srt, vtt, verbose_json, and stream events.

Shapes follow the OpenAPI spec (CreateTranscriptionResponseJson / VerboseJson,
TranscriptTextDeltaEvent / TranscriptTextDoneEvent). Pure functions of a ``Transcript``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ferry.audio.languages import language_name
from ferry.audio.transcriber import Segment, Transcript, Word

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
TIMESTAMP_GRANULARITIES = ("word", "segment")


@dataclass(frozen=True)
class Rendered:
    body: str
    media_type: str


def render(transcript: Transcript, response_format: str, granularities: set[str]) -> Rendered:
    """The response body for ``response_format`` (already validated against RESPONSE_FORMATS)."""
    if response_format == "json":
        return Rendered(json.dumps(to_json(transcript)), "application/json")
    if response_format == "verbose_json":
        body = to_verbose_json(
            transcript,
            segments="segment" in granularities or not granularities,
            words="word" in granularities,
        )
        return Rendered(json.dumps(body), "application/json")
    if response_format == "text":
        return Rendered(transcript.text + "\n", "text/plain; charset=utf-8")
    if response_format == "srt":
        return Rendered(to_srt(transcript.segments), "text/plain; charset=utf-8")
    if response_format == "vtt":
        return Rendered(to_vtt(transcript.segments), "text/vtt; charset=utf-8")
    raise ValueError(f"unknown response_format {response_format!r}")


def to_json(t: Transcript) -> dict[str, Any]:
    return {"text": t.text, "usage": _usage(t)}


def to_verbose_json(t: Transcript, *, segments: bool, words: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": t.task,
        # a translation's language is its output's: always English
        "language": "english" if t.task == "translate" else language_name(t.language),
        "duration": t.duration,
        "text": t.text,
    }
    if words:
        body["words"] = [_word(w) for w in t.words or ()]
    if segments:
        body["segments"] = [_segment(s) for s in t.segments]
    body["usage"] = _usage(t)
    return body


def to_srt(segments: tuple[Segment, ...]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_cue_text(s)}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: tuple[Segment, ...]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_cue_text(s)}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def delta_event(delta: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": delta}


def done_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text}


def _usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(t.duration)}


def _segment(s: Segment) -> dict[str, Any]:
    return {
        "id": s.id,
        "seek": s.seek,
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }


def _word(w: Word) -> dict[str, Any]:
    return {"word": w.word.strip(), "start": w.start, "end": w.end}


def _clock(seconds: float, decimal_marker: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cue_text(s: Segment) -> str:
    return s.text.strip().replace("-->", "->")  # a cue's text must not contain the arrow
