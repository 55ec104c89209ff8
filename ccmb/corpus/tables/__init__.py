"""The data the curation steps read and write: download folders, decision tables (the one writer and the
checked readers), scores files, and the step-function contract (:mod:`ccmb.corpus.tables.dataflow`)."""
