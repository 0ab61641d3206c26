"""Shot-boundary models behind the splitter plugins (:mod:`curate.default_plugins.splitters`)."""
