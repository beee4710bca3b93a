"""The stop flag a driver raises on SIGTERM / Ctrl-C, as a Ray actor.

A module of its own, importing nothing: a process that starts the actor or deserializes a handle
to it (each worker does) imports the module that defines its class, and `driver` would bring Ray
Train, torch and the tokenizers with it (3.5 s of CPU, measured in the actor's own process).
"""


class StopRequest:
    """Workers read it at logging steps, agree on it, save a checkpoint and return."""

    def __init__(self):
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def clear(self) -> None:
        self.requested = False

    def is_requested(self) -> bool:
        return self.requested
