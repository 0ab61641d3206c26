"""Built-in scorers: caption alignment and technical properties."""

from curate import hookimpl


@hookimpl
def register_scorers(register):
    register("alignment", _alignment, columns=["<encoder>_sim"],
             description="cosine(clip embedding, caption embedding) for every embedding set (no model needed)")
    register("technical", _technical, columns=["duration_s", "width", "height", "aspect", "fps"],
             description="clip duration, source resolution, aspect ratio and fps")


def _alignment(**options):
    from curate.scorers import AlignmentScorer

    return AlignmentScorer(**options)


def _technical(**options):
    from curate.scorers import TechnicalScorer

    return TechnicalScorer(**options)
