"""What the curation does, defined once: the filter rules, the dedup levels (:mod:`ccmb.corpus.steps.levels`,
the registry), decontamination, keep-aware combining and the shard plan, as functions over Arrow tables that
any engine runs. No module here imports an engine."""
