"""Reading a curated root back: search (:mod:`curate.query.search`), retrieval evaluation
(:mod:`curate.query.retrieval`) and reports (:mod:`curate.query.report`)."""
