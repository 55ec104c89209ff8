"""Where the curation runs: :mod:`ccmb.corpus.engines.local` (this process, spill buckets within a memory
budget, worker processes) and :mod:`ccmb.corpus.engines.spark` (Spark executors). An engine moves partitions
and calls the step functions it is given; it imports no step."""
