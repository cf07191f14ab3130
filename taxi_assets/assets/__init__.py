"""Assets by stage: ``ingest`` (raw_trips) and ``prepare`` (cleaned_trips, training_set)."""
