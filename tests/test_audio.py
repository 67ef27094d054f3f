"""Audio transcription end to end: espeak-ng speech → real uvicorn server → real Whisper tiny.en.

The server is the whole Ferry app (``python -m ferry serve``), started by the ``base_url`` fixture.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ferry.app import BUNDLED_TRANSCRIBER, TRANSCRIPTION_ALIASES
from ferry.audio.transcriber import Transcriber, bundled_model_dir
from ferry.errors import InvalidRequest
from ferry.services.models import ModelRegistry, ModelSpec

SPOKEN = (
    "Please send the weather report to the office before noon on Friday. "
    "The meeting will start at ten in the morning and everyone should bring their notes."
)
MAX_AUDIO_BYTES = 1_000_000  # the espeak wav is ~300 kB
CONTAINERS = ("wav", "mp3", "ogg", "flac", "webm", "m4a")
SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
VTT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def fraction_heard(text: str) -> float:
    heard = set(words_of(text))
    spoken = words_of(SPOKEN)
    return sum(w in heard for w in spoken) / len(spoken)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """SPOKEN as speech in each container format, keyed by extension."""
    if shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None:
        pytest.fail("espeak-ng and ffmpeg are required: apt-get install -y espeak-ng ffmpeg")
    root = tmp_path_factory.mktemp("speech")
    wav = root / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav), SPOKEN], check=True)
    for ext in CONTAINERS[1:]:
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(root / f"speech.{ext}")],
            check=True,
        )
    return {ext: (root / f"speech.{ext}").read_bytes() for ext in CONTAINERS}


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    """The whole Ferry server (middleware, error handler, routes), as users run it."""
    from conftest import FerryServer

    server = FerryServer("--max-audio-bytes", str(MAX_AUDIO_BYTES))
    yield server.url
    server.stop()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/v1", api_key="x", max_retries=0, _strict_response_validation=True
    )


def transcribe(client: openai.OpenAI, audio: bytes, ext: str = "wav", **kwargs: object) -> object:
    return client.audio.transcriptions.create(
        model="whisper-1", file=(f"speech.{ext}", audio), **kwargs
    )


def post(base_url: str, path: str = "/v1/audio/transcriptions", **kwargs: object) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", timeout=60, **kwargs)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- transcription --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", CONTAINERS)
def test_transcribes_spoken_words_from_each_container(
    client: openai.OpenAI, speech: dict[str, bytes], ext: str
) -> None:
    result = transcribe(client, speech[ext], ext)
    assert fraction_heard(result.text) >= 0.8, result.text


def test_json_format_has_text_and_duration_usage(base_url: str, speech: dict[str, bytes]) -> None:
    r = post(base_url, files={"file": ("a.wav", speech["wav"])}, data={"model": "whisper-tiny.en"})
    assert r.status_code == 200
    body = r.json()
    assert fraction_heard(body["text"]) >= 0.8
    assert body["usage"]["type"] == "duration" and 8 <= body["usage"]["seconds"] <= 12


def test_text_format_is_plain_text(client: openai.OpenAI, speech: dict[str, bytes]) -> None:
    text = transcribe(client, speech["wav"], response_format="text")
    assert isinstance(text, str) and not text.lstrip().startswith("{")
    assert fraction_heard(text) >= 0.8


def _cue_times(match: re.Match[str]) -> tuple[float, float]:
    h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups())
    return h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000


def test_srt_format_has_numbered_cues_with_ordered_timestamps(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    srt = transcribe(client, speech["wav"], response_format="srt")
    cues = [c.splitlines() for c in str(srt).strip().split("\n\n")]
    assert len(cues) >= 1
    last_end = 0.0
    for number, cue in enumerate(cues, start=1):
        assert cue[0] == str(number)
        match = SRT_TIME.match(cue[1])
        assert match, cue[1]
        start, end = _cue_times(match)
        assert last_end <= start <= end <= 12
        last_end = end
    assert fraction_heard(" ".join(" ".join(c[2:]) for c in cues)) >= 0.8


def test_vtt_format_has_header_and_ordered_timestamps(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    vtt = str(transcribe(client, speech["wav"], response_format="vtt"))
    header, *blocks = vtt.strip().split("\n\n")
    assert header == "WEBVTT" and blocks
    last_end = 0.0
    for block in blocks:
        timing = block.splitlines()[0]
        match = VTT_TIME.match(timing)
        assert match, timing
        start, end = _cue_times(match)
        assert last_end <= start <= end <= 12
        last_end = end
    assert fraction_heard(" ".join(b.split("\n", 1)[1] for b in blocks)) >= 0.8


def test_verbose_json_has_segments_and_words_when_asked(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    result = transcribe(
        client,
        speech["wav"],
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.language == "english"
    assert 9 <= result.duration <= 11
    assert fraction_heard(result.text) >= 0.8
    assert result.segments and [s.id for s in result.segments] == list(range(len(result.segments)))
    for s in result.segments:
        assert 0 <= s.start <= s.end <= result.duration + 0.5 and s.tokens
        assert s.avg_logprob <= 0 and 0 <= s.no_speech_prob <= 1
    assert result.words and fraction_heard(" ".join(w.word for w in result.words)) >= 0.8
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:]))


def test_verbose_json_without_word_granularity_has_no_words(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    result = transcribe(client, speech["wav"], response_format="verbose_json")
    assert result.segments and result.words is None


def test_stream_sends_text_deltas_then_done(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    events = list(transcribe(client, speech["wav"], stream=True))
    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas).strip() == done.text
    assert fraction_heard(done.text) >= 0.8


def test_concurrent_requests_all_complete(base_url: str, speech: dict[str, bytes]) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            return await asyncio.gather(*(
                http.post("/v1/audio/transcriptions", files={"file": ("a.mp3", speech["mp3"])},
                          data={"model": "whisper-1"})
                for _ in range(3)
            ))  # fmt: skip

    for r in asyncio.run(run()):
        assert r.status_code == 200 and fraction_heard(r.json()["text"]) >= 0.8


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x00garbage" * 500, b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_undecodable_audio_is_400_naming_file(base_url: str, data: bytes) -> None:
    r = post(base_url, files={"file": ("a.wav", data)}, data={"model": "whisper-1"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["param"] == "file" and "decode" in err["message"]


def test_empty_file_is_400(base_url: str) -> None:
    r = post(base_url, files={"file": ("a.wav", b"")}, data={"model": "whisper-1"})
    assert r.status_code == 400 and error_of(r)["param"] == "file"


def test_garbage_through_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        transcribe(client, b"not audio at all" * 100)


@pytest.mark.parametrize(
    "size", [MAX_AUDIO_BYTES + 1, 4 * MAX_AUDIO_BYTES], ids=["just-over", "far-over"]
)
def test_oversize_file_is_413(base_url: str, size: int) -> None:
    r = post(base_url, files={"file": ("a.wav", b"\x00" * size)}, data={"model": "whisper-1"})
    assert r.status_code == 413
    assert error_of(r)["code"] == "payload_too_large"


def test_oversize_chunked_upload_is_413_without_content_length(base_url: str) -> None:
    boundary = "ferryboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, with no length
        yield head
        for _ in range(3 * MAX_AUDIO_BYTES // 65536):
            yield b"\x00" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = post(
        base_url,
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "-0.1"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"timestamp_granularities[]": "char"}, "timestamp_granularities"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),  # needs verbose_json
        ({"stream": "maybe"}, "stream"),
        ({"stream": "true", "response_format": "srt"}, "stream"),
        ({"language": "xx"}, "language"),
        ({"language": "fr"}, "language"),  # tiny.en is English-only
        ({"model": ""}, "model"),
    ],
)
def test_bad_parameter_is_400_naming_it(
    base_url: str, speech: dict[str, bytes], fields: dict[str, str], param: str
) -> None:
    r = post(
        base_url, files={"file": ("a.wav", speech["wav"])}, data={"model": "whisper-1"} | fields
    )
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == param


def test_missing_file_is_400_naming_file(base_url: str) -> None:
    r = post(base_url, data={"model": "whisper-1"}, files={"other": ("x", b"1")})
    assert r.status_code == 400 and error_of(r)["param"] == "file"


def test_unknown_model_is_404(base_url: str, speech: dict[str, bytes]) -> None:
    r = post(base_url, files={"file": ("a.wav", speech["wav"])}, data={"model": "whisper-9"})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"


def test_translation_with_english_only_model_is_400(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # newer clients deprecate translations
        with pytest.raises(openai.BadRequestError, match="cannot translate"):
            client.audio.translations.create(model="whisper-1", file=("a.wav", speech["wav"]))


# --- the Transcriber itself (its own instance: an asyncio.Semaphore belongs to one loop) -----


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber.bundled(max_concurrency=1, max_audio_seconds=20)


def test_audio_longer_than_the_limit_is_refused_while_decoding(
    transcriber: Transcriber, tmp_path: Path
) -> None:
    silence = tmp_path / "silence.flac"  # 10 min of silence: a few kB that decode to 38 MB
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
         "-t", "600", str(silence)],
        check=True,
    )  # fmt: skip
    assert silence.stat().st_size < 200_000
    with pytest.raises(InvalidRequest, match="longer than the limit of 20 seconds"):
        asyncio.run(transcriber.transcribe(silence.read_bytes()))


def test_file_without_audio_track_is_invalid(transcriber: Transcriber, tmp_path: Path) -> None:
    video = tmp_path / "video.webm"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1",
         "-c:v", "libvpx", str(video)],
        check=True,
    )  # fmt: skip
    with pytest.raises(InvalidRequest, match="no audio track"):
        asyncio.run(transcriber.transcribe(video.read_bytes()))


def test_transcriber_rejects_garbage_with_invalid_request(transcriber: Transcriber) -> None:
    with pytest.raises(InvalidRequest):
        asyncio.run(transcriber.transcribe(b"\x01" * 4096))


def test_stream_closed_early_frees_its_slot(
    transcriber: Transcriber, speech: dict[str, bytes]
) -> None:
    async def run() -> str:
        segments = await transcriber.stream(speech["wav"])
        first = await anext(segments)
        await segments.aclose()  # what a client hanging up does to the response
        assert first.text.strip()
        done = await asyncio.wait_for(transcriber.transcribe(speech["ogg"]), timeout=120)
        return done.text

    assert fraction_heard(asyncio.run(run())) >= 0.8


def test_bundled_model_is_english_only_and_shared_by_aliases() -> None:
    """Transcription is the registry's third kind: loaded on first use, one instance per model
    however many names it has."""
    spec = ModelSpec(BUNDLED_TRANSCRIBER, str(bundled_model_dir()), "transcription")

    async def run() -> None:
        registry = ModelRegistry([spec], engine_config=None, aliases=TRANSCRIPTION_ALIASES)  # type: ignore[arg-type]
        assert registry.entries[BUNDLED_TRANSCRIBER].loaded is None
        one = await registry.transcriber("whisper-1")
        assert one is await registry.transcriber("whisper-tiny.en")
        assert one.multilingual is False
        assert sorted(n for n, _ in registry.names()) == ["whisper-1", "whisper-tiny.en"]
        registry.close()

    asyncio.run(run())


# --- streaming transport: ferry.sse pings and send timeout ----------------------------------


def multipart(audio: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a stream=true transcription upload, as a client sends them."""
    req = httpx.Request("POST", "http://test/v1/audio/transcriptions",
                        files={"file": ("a.wav", audio)}, data={"model": "whisper-1",
                                                               "stream": "true"})
    return [(k.lower(), v) for k, v in req.headers.raw], req.read()


async def call_audio_app(transcriber: Transcriber, audio: bytes, send, *, ping: float,
                         send_timeout: float) -> None:
    """The audio routes (ferry.api.audio) as ASGI, driven with ``send`` as the client side."""
    from fastapi import FastAPI

    from ferry.api.audio import make_router

    async def get_transcriber(_model: str) -> Transcriber:
        return transcriber

    app = FastAPI()
    app.include_router(make_router(get_transcriber, MAX_AUDIO_BYTES, ping_interval=ping,
                                   send_timeout=send_timeout))
    headers, body = multipart(audio)
    sent = False
    never = asyncio.Event()

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client never hangs up on its own
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/audio/transcriptions",
             "raw_path": b"/v1/audio/transcriptions", "query_string": b"", "root_path": "",
             "headers": headers, "server": ("test", 80), "client": ("127.0.0.1", 1)}
    await app(scope, receive, send)


def test_audio_stream_sends_pings_through_the_sse_encoder(
    transcriber: Transcriber, speech: dict[str, bytes]
) -> None:
    bodies: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert dict(message["headers"])[b"content-type"].startswith(b"text/event-stream")
        elif message.get("body"):
            bodies.append(message["body"])

    asyncio.run(call_audio_app(transcriber, speech["wav"], send, ping=0.01, send_timeout=30))
    assert b": ping\n\n" in bodies  # whisper takes far longer than 10 ms per segment
    events = [b for b in bodies if b.startswith(b"data: ")]
    assert b'"type":"transcript.text.done"' in events[-1]
    assert all(b.endswith(b"\n\n") for b in bodies)


def test_audio_stream_to_a_stalled_reader_ends_at_the_send_timeout_and_frees_the_model(
    transcriber: Transcriber, speech: dict[str, bytes]
) -> None:
    """The reader takes the headers, then stops reading: each send blocks forever."""
    stalled = asyncio.Event()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            stalled.set()
            await asyncio.Event().wait()

    async def run() -> str:
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(call_audio_app(transcriber, speech["wav"], send, ping=0.05,
                                              send_timeout=1.0), timeout=60)
        ended = asyncio.get_running_loop().time() - t0
        assert stalled.is_set() and ended < 60
        # max_concurrency=1: the next transcription runs only if the stalled one let go
        done = await asyncio.wait_for(transcriber.transcribe(speech["ogg"]), timeout=120)
        return done.text

    assert fraction_heard(asyncio.run(run())) >= 0.8
