"""Reading media: probing and cutting (:mod:`curate.media.video`), decoding frames (:mod:`curate.media.frames`)."""
