"""Speech to text: the Whisper transcriber, its model registry and OpenAI's response formats."""
