"""The local stack: what `make run` starts on a developer's machine, and what tests reuse."""
