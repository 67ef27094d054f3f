"""The inference engine: sequences, scheduler, llama.cpp runner and the engine thread."""
