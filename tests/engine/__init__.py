"""A runtime in this process: turns, steps, timers, hibernation, supervision, files, bad
input, graceful close, observability, the asyncio host, a full disk."""
