"""One file's import in Dagster: the import and archive assets, whose steps run here
(``assets``); one file version imported, reported and archived as a unit (``unit``, what
it tells Dagster: ``results``); the files after the run's own (``catch_up``), a backfill's
range (``backfill``), and which files come next (``pending``)."""
