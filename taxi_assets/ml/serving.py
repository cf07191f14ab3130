"""What serves, as plain data: the recorded decision readers follow, the pointer that publishes
it, and whether a publication (the pointer, MLflow's ``champion`` alias) is behind the record.

Dagster's record of a decision comes first; the pointer and the alias follow it. A process that
dies between them leaves the publication behind, never ahead, and :func:`publication` says what
the next publisher must still do.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

POINTER_FORMAT = "taxi-assets-serving-pointer"
POINTER_VERSION = 1


class PointerError(ValueError):
    """A pointer document that cannot be read; the message names the pointer and the field."""


@dataclass(frozen=True)
class ServedDecision:
    """One recorded decision of what serves: a production_model materialization."""

    month: str  # the month the decision was made for
    storage_id: int  # its entry in Dagster's event log: a later decision has a larger id
    run_id: str
    name: str  # the model's short name (xgboost, LinearRegression, ...)
    model_partition: str  # the month the model was trained for
    registered_model: str | None
    version: str | None
    reason: str = ""
    how: str = "automatic"  # the promotion that put the model there (see taxi_assets.ml.steering)
    by: str = ""  # who, for an operator's decision
    source_month: str | None = None  # the production_model month whose value holds the model

    @property
    def id(self) -> str:
        """Names the decision in keys and logs: unique, and the same in every store."""
        return f"{self.month}-{self.storage_id}"

    @property
    def alias_target(self) -> tuple[str, str] | None:
        """The registered version MLflow's ``champion`` alias should name, if the model has one."""
        if self.registered_model and self.version:
            return self.registered_model, self.version
        return None

    def describe(self) -> str:
        version = f"{self.registered_model} v{self.version}" if self.alias_target else "unregistered"
        return f"{self.name} trained for {self.model_partition} ({version}), decided for {self.month}"


def pointer_document(decision: ServedDecision, model_key: str, published_at: str) -> dict:
    """The pointer: which decision serves and the immutable key of its model files."""
    return {
        "format": POINTER_FORMAT,
        "version": POINTER_VERSION,
        "decision": asdict(decision),
        "model_key": model_key,
        "published_at": published_at,
    }


def read_pointer(document: object, where: str) -> tuple[ServedDecision, str]:
    """The decision and model key a pointer names; :class:`PointerError` names what is wrong."""
    if not isinstance(document, dict) or document.get("format") != POINTER_FORMAT:
        raise PointerError(f"{where}: not a serving pointer (no format {POINTER_FORMAT!r})")
    if document.get("version") != POINTER_VERSION:
        raise PointerError(f"{where}: pointer version {document.get('version')!r}; this reader knows {POINTER_VERSION}")
    decision, key = document.get("decision"), document.get("model_key")
    if not isinstance(key, str) or not key:
        raise PointerError(f"{where}: model_key must be a non-empty string")
    if not isinstance(decision, dict):
        raise PointerError(f"{where}: decision must be an object")
    required = [field.name for field in fields(ServedDecision) if field.default is MISSING]
    missing = [name for name in required if name not in decision]
    if missing:
        raise PointerError(f"{where}: decision lacks {', '.join(missing)}")
    known = {field.name for field in fields(ServedDecision)}
    served = ServedDecision(**{name: value for name, value in decision.items() if name in known})
    if not isinstance(served.storage_id, int) or not isinstance(served.month, str):
        raise PointerError(f"{where}: decision.storage_id must be an integer and decision.month a string")
    return served, key


@dataclass(frozen=True)
class Publication:
    """What a publisher must still do for the decision that serves."""

    write_pointer: bool
    move_alias: bool
    reason: str

    @property
    def needed(self) -> bool:
        return self.write_pointer or self.move_alias


def publication(
    serving: ServedDecision | None,
    published: ServedDecision | None,
    alias: tuple[str, str] | None,
    alias_known: bool = True,
) -> Publication:
    """Compare the decision that serves (Dagster's record) with what readers see: the pointer
    (``published``) and the alias (``alias``; ``alias_known`` False when MLflow is not asked)."""
    if serving is None:
        return Publication(False, False, "no decision recorded yet")
    write = published is None or published.id != serving.id
    target = serving.alias_target
    move = alias_known and target is not None and alias != target
    parts = []
    if write:
        behind = "no pointer" if published is None else f"the pointer names {published.id}"
        parts.append(f"{behind}, the record {serving.id}")
    if move and target is not None:
        named = "no version" if alias is None else f"{alias[0]} v{alias[1]}"
        parts.append(f"the champion alias names {named}, the record {target[0]} v{target[1]}")
    return Publication(write, move, "; ".join(parts) or f"published: {serving.id}")
