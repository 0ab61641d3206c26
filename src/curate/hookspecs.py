"""Plugin hooks. A plugin module implements any of these with ``@curate.hookimpl``.

Each hook receives a ``register`` callback and registers *factories*: nothing is imported or loaded
until a stage asks for the component by name, so ``curate plugins`` stays instant.
"""

from pluggy import HookspecMarker

hookspec = HookspecMarker("curate")


@hookspec
def register_encoders(register):
    """Register video-text encoders: ``register(name, factory, description=..., options={...})``.

    ``factory(**options)`` returns a :class:`curate.encoders.base.Encoder`; ``options`` documents the
    ``-o key=value`` options it accepts (name -> help text).
    """


@hookspec
def register_splitters(register):
    """Register scene splitters: ``register(name, factory, description=...)``.

    ``factory(**options)`` returns a :class:`curate.splitters.base.Splitter`: a callable
    ``(path, fps, num_frames) -> list[(start_frame, end_frame)]`` (half-open frame ranges), optionally with
    ``tracker(fps, width, height)`` to be fed the frames of the stage's own decode.
    """


@hookspec
def register_scorers(register):
    """Register clip scorers: ``register(name, factory, description=..., columns=[...])``.

    ``factory(**options)`` returns a :class:`curate.scorers.Scorer`, which writes ``columns`` to the scores table.
    """


@hookspec
def register_captioners(register):
    """Register clip captioners: ``register(name, factory, description=..., options={...})``.

    ``factory(device=..., **options)`` returns a :class:`curate.captioners.Captioner` (sampled frames of a
    batch of clips -> one caption each); ``options`` documents the ``-o key=value`` options it accepts.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``curate`` CLI (a :class:`typer.Typer`)."""
