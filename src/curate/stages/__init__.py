"""The stages, in the order data flows through them; each is a plain function over the tables of one root.

ingest (sources, media) -> split (clips, transitions) -> [process = split + embed in one decode]
-> caption (captions/<name>) -> embed (embeddings/<name>) -> score (scores) -> filter (subsets/<name>/selection)
-> publish (WebDataset shards, annotations, card). ``features`` writes per-frame features beside the flow;
``shard`` picks a batch's sources; ``where`` is the filter's expression language.
"""
