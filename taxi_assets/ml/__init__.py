"""Plain ML logic and the decisions over plain data (no Dagster imports): the trip schema, cleaning,
features, the training set, search and training, the champion, which months to retrain, decay,
lineage. Unit-tested directly and usable outside the asset graph."""
