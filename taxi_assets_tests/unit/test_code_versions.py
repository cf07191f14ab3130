"""Every asset has a code version, and it changes when what the asset computes changes."""

from __future__ import annotations

import json

import pytest

from taxi_assets.lib.catalog import CODE_VERSIONS
from taxi_assets_tests.code_versions import LOCK, LOGIC, fingerprint, fingerprint_source

UPDATE = "python -m taxi_assets_tests.code_versions --update"


def test_every_asset_has_its_code_version_from_the_catalog():
    from taxi_assets.definitions import build_defs

    graph = build_defs().resolve_asset_graph()
    versions = {key.to_user_string(): graph.get(key).code_version for key in graph.materializable_asset_keys}
    assert versions == CODE_VERSIONS
    assert set(LOGIC) == set(CODE_VERSIONS)


@pytest.mark.parametrize("asset", sorted(LOGIC))
def test_logic_changes_bump_the_code_version(asset):
    locked = json.loads(LOCK.read_text())[asset]
    if CODE_VERSIONS[asset] != locked["code_version"]:
        pytest.fail(
            f"{asset}'s code_version is {CODE_VERSIONS[asset]} but {LOCK.name} checked {locked['code_version']}: "
            f"run `{UPDATE}` to record its logic with the new version"
        )
    changed = [target for target in LOGIC[asset] if fingerprint(target) != locked["logic"].get(target)]
    assert not changed, (
        f"what {asset} computes changed ({', '.join(changed)}) but its code_version is still {CODE_VERSIONS[asset]}: "
        f"bump CODE_VERSIONS['{asset}'] in taxi_assets/lib/catalog.py (Dagster then marks its materializations "
        f"unsynced and the sensor redoes them), then run `{UPDATE}`. A change that does not change what it "
        f"computes (a refactor): run `{UPDATE}` alone."
    )


FUNCTION = '''
def clean(trips, context):
    """Keep trips of 1 to 60 minutes."""
    # a comment
    context.log.info(f"cleaning {len(trips)} trips")
    return trips[trips.duration.between(1, 60)]
'''


def test_the_fingerprint_ignores_words_and_sees_logic():
    reference = fingerprint_source(FUNCTION)
    reworded = FUNCTION.replace("Keep trips of 1 to 60 minutes.", "Trips that took a plausible time.")
    relogged = FUNCTION.replace('context.log.info(f"cleaning {len(trips)} trips")', 'context.log.debug("go")')
    recommented = FUNCTION.replace("# a comment", "# another comment, longer")
    assert reference == fingerprint_source(reworded) == fingerprint_source(relogged) == fingerprint_source(recommented)
    bound = FUNCTION.replace("between(1, 60)", "between(1, 90)")
    assert fingerprint_source(bound) != reference
    assert fingerprint_source("X = 1\ndef f():\n    return X\n", "X") != fingerprint_source("X = 2\n", "X")


def test_a_real_cleaning_bound_is_part_of_cleaned_trips_logic():
    from pathlib import Path

    import taxi_assets.ml.cleaning as cleaning

    source = Path(cleaning.__file__).read_text()
    assert "MAX_DURATION_MINUTES = 60.0" in source
    changed = source.replace("MAX_DURATION_MINUTES = 60.0", "MAX_DURATION_MINUTES = 90.0")
    assert fingerprint_source(changed) != fingerprint_source(source)
    assert "taxi_assets.ml.cleaning" in LOGIC["cleaned_trips"]
