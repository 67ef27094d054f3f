"""Audio transcription throughput: seconds of audio transcribed per wall-clock second.

Synthesises English speech with espeak-ng (converted to mp3 so decoding is part of the cost),
then sends ``--requests`` transcriptions at each client ``--concurrency`` through a real uvicorn
server on loopback running the /v1/audio router with the bundled Whisper tiny.en, once per
``--slots`` (the Transcriber's max_concurrency). Bounded: every request count is fixed.

    python benchmarks/audio.py --concurrency 1 4 --slots 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ferry.api.audio import make_router
from ferry.audio.transcriber import Transcriber
from ferry.errors import FerryError
from ferry.settings import Settings

SENTENCES = (
    "Please send the weather report to the office before noon on Friday.",
    "The meeting will start at ten in the morning and everyone should bring their notes.",
    "A small server can answer many questions if it keeps its queues short.",
    "The river was calm and the boats moved slowly toward the old harbour.",
    "Green apples and ripe pears were sold at the market every Saturday.",
    "She opened the window to let the cool evening air into the kitchen.",
)


def make_speech(target_seconds: float, workdir: Path) -> tuple[bytes, float]:
    """An mp3 of at least ``target_seconds`` of speech, and its duration."""
    text, wav = "", workdir / "speech.wav"
    duration, n = 0.0, 0
    while duration < target_seconds:
        # distinct sentences in turn: a repeated one trips Whisper's compression-ratio check and
        # re-decodes every window at each fallback temperature (6x the work)
        text += " " + SENTENCES[n % len(SENTENCES)]
        n += 1
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        duration = (wav.stat().st_size - 44) / (22050 * 2)  # espeak: 22.05 kHz mono s16
    mp3 = workdir / "speech.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    return mp3.read_bytes(), duration


def start_server(slots: int) -> tuple[uvicorn.Server, threading.Thread, str]:
    transcriber = Transcriber.bundled(max_concurrency=slots)

    async def get_transcriber(_model: str) -> Transcriber:
        return transcriber

    app = FastAPI()
    s = Settings()
    app.include_router(make_router(get_transcriber, max_audio_bytes=s.max_audio_bytes,
                                   ping_interval=s.sse_ping_interval, send_timeout=s.send_timeout))

    @app.exception_handler(FerryError)
    async def ferry_error(_: Request, exc: FerryError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


async def run_level(url: str, audio: bytes, concurrency: int, requests: int) -> list[float]:
    """Send ``requests`` transcriptions, ``concurrency`` at a time; return per-request latency."""
    latencies: list[float] = []
    pending = iter(range(requests))

    async def worker(http: httpx.AsyncClient) -> None:
        for _ in pending:
            start = time.perf_counter()
            r = await http.post(
                "/v1/audio/transcriptions",
                files={"file": ("speech.mp3", audio)},
                data={"model": "whisper-1"},
            )
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the test clip")
    parser.add_argument("--requests", type=int, default=8, help="requests per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--slots", type=int, nargs="+", default=[1], help="max_concurrency")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        audio, duration = make_speech(args.seconds, Path(tmp))
    print(
        f"clip: {duration:.1f} s of speech, {len(audio)} bytes mp3; {args.requests} requests/level"
    )
    print("| slots | client concurrency | audio s / wall s | p50 latency s | p95 latency s |")
    print("| --- | --- | --- | --- | --- |")
    for slots in args.slots:
        server, thread, url = start_server(slots)
        asyncio.run(run_level(url, audio, 1, 1))  # warm-up: first-run allocations
        for concurrency in args.concurrency:
            start = time.perf_counter()
            latencies = asyncio.run(run_level(url, audio, concurrency, args.requests))
            wall = time.perf_counter() - start
            p95 = sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)]
            print(
                f"| {slots} | {concurrency} | {duration * len(latencies) / wall:.1f} | "
                f"{statistics.median(latencies):.2f} | {p95:.2f} |",
                flush=True,
            )
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
