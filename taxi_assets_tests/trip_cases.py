"""One list of trips, each with the answer every surface must give: accepted (as which record)
or refused (with which words in the error). The unit tests run it through TripRecord; the
integration tests through the server, the predict job, load_model().predict and the MLflow model."""

from __future__ import annotations

COURSE_A = {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98}
COURSE_B = {"PULocationID": 65, "DOLocationID": 170, "trip_distance": 6.54}

# name -> (trip, the record it means, or None; a fragment of the error when refused)
CASES: dict[str, tuple[dict, dict | None, str | None]] = {
    "integers": (COURSE_A, COURSE_A, None),
    "the course's strings": ({"PULocationID": "236", "DOLocationID": "239", "trip_distance": 1.98}, COURSE_A, None),
    "mixed, as the course's notebook": (
        {"PULocationID": "65", "DOLocationID": 170, "trip_distance": 6.54},
        COURSE_B,
        None,
    ),
    "whole floats (a pandas column with gaps)": (
        {"PULocationID": 236.0, "DOLocationID": 239.0, "trip_distance": 1.98},
        COURSE_A,
        None,
    ),
    "distance as a string of a number": (
        {"PULocationID": 65, "DOLocationID": 170, "trip_distance": "6.54"},
        COURSE_B,
        None,
    ),
    "zero miles": (
        {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0},
        {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0.0},
        None,
    ),
    "an unseen zone pair": (
        {"PULocationID": 264, "DOLocationID": 999, "trip_distance": 3.0},
        {"PULocationID": 264, "DOLocationID": 999, "trip_distance": 3.0},
        None,
    ),
    "id zero": (
        {"PULocationID": 0, "DOLocationID": 239, "trip_distance": 1.98},
        None,
        "PULocationID: must be a location id (a positive integer), got 0",
    ),
    "negative id": (
        {"PULocationID": 236, "DOLocationID": -4, "trip_distance": 1.98},
        None,
        "DOLocationID: must be a location id (a positive integer), got -4",
    ),
    "id with letters": (
        {"PULocationID": "a1", "DOLocationID": 239, "trip_distance": 1.98},
        None,
        "PULocationID: must be a location id",
    ),
    "fractional id": (
        {"PULocationID": 236.5, "DOLocationID": 239, "trip_distance": 1.98},
        None,
        "PULocationID: must be a location id (a positive integer), got 236.5",
    ),
    "boolean id": (
        {"PULocationID": True, "DOLocationID": 239, "trip_distance": 1.98},
        None,
        "PULocationID: must be a location id (a positive integer), not a boolean",
    ),
    "negative distance": (
        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": -1},
        None,
        "trip_distance: must be between 0 and 500 miles",
    ),
    "absurd distance": (
        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1e9},
        None,
        "trip_distance: must be between 0 and 500 miles",
    ),
    "distance in words": (
        {"PULocationID": 236, "DOLocationID": 239, "trip_distance": "far"},
        None,
        "trip_distance: must be a number of miles",
    ),
    "missing distance": ({"PULocationID": 236, "DOLocationID": 239}, None, "trip_distance: missing field"),
    "an extra field": ({**COURSE_A, "tip": 3}, None, "tip: unknown field"),
}
