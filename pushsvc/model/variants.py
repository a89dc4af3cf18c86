"""A campaign's A/B split: its message variants, their weights, and a control group that is counted, not sent.

Assignment is a pure function of (campaign id, user): a restart, another replica, a resumed chunk or another
range of the same campaign put a user in the same group, and all of a user's devices go together (a device
without a user is its own identity, its token). Two independent hashes decide: first whether the user is in
the control group (`control_percent`), then which variant by weight, so changing the weights of a future
campaign never moves anyone in or out of its control group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pushsvc.model.errors import RequestError
from pushsvc.model.fields import reject_unknown, require_mapping
from pushsvc.model.message import Message, parse_message
from pushsvc.model.options import Options

VARIANT_FIELDS = ("name", "weight", "message")
MAX_VARIANTS = 10
MAX_WEIGHT = 10_000
# Half the audience held out is already an unusual experiment; more would be a campaign nobody receives.
MAX_CONTROL_PERCENT = 50
# The group of the held-out users in counts and views; not a variant name anyone may give.
CONTROL = "control"
# A campaign with a control group and no variants: what everyone else gets (its message) is counted as this.
DEFAULT_VARIANT = "default"
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SCALE = float(1 << 64)


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    message: Message


@dataclass(frozen=True)
class Split:
    """How a campaign's audience is divided: `variants` (none: the campaign's one message, as variant None) and
    the share held out as the control group."""

    campaign_id: str
    variants: tuple[Variant, ...] = ()
    control_percent: float = 0.0

    def assign(self, identity: str) -> Variant | str | None:
        """The variant `identity` (a user id, or a token for a device without one) gets; CONTROL for the control
        group; None when there are no variants (the campaign's own message)."""
        if self.control_percent and _unit(self.campaign_id, "control", identity) * 100 < self.control_percent:
            return CONTROL
        if not self.variants:
            return None
        point = _unit(self.campaign_id, "variant", identity) * sum(v.weight for v in self.variants)
        for variant in self.variants:
            point -= variant.weight
            if point < 0:
                return variant
        return self.variants[-1]  # float rounding at the very top of the range


    def group(self, identity: str) -> str:
        """The name of the group `identity` is in: a variant's, CONTROL, or DEFAULT_VARIANT (a control group and
        no variants: everyone else)."""
        assigned = self.assign(identity)
        if isinstance(assigned, Variant):
            return assigned.name
        return assigned if assigned is not None else DEFAULT_VARIANT


def _unit(campaign_id: str, purpose: str, identity: str) -> float:
    """A uniform number in [0, 1) from SHA-256 of the three (NUL-separated: no two triples share a preimage)."""
    digest = hashlib.sha256(f"{campaign_id}\0{purpose}\0{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def parse_variants(value: Any, options: Options) -> list[dict[str, Any]]:
    """Validate a campaign's `variants` (as the caller sent them; errors name `variants[i].field`); returns them
    as stored. Each message is the request contract's `message`."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VARIANTS:
        raise RequestError("variants", f"must be a list of 1 to {MAX_VARIANTS} variants")
    names: set[str] = set()
    stored = []
    category: str | None = None
    for index, item in enumerate(value):
        where = f"variants[{index}]"
        variant = require_mapping(item, where)
        reject_unknown(variant, where, VARIANT_FIELDS)
        name = variant.get("name")
        if not isinstance(name, str) or not VARIANT_NAME.match(name) or name == CONTROL:
            raise RequestError(f"{where}.name", f"1-32 letters, digits, '_' or '-', not {CONTROL!r}")
        if name in names:
            raise RequestError(f"{where}.name", f"{name!r} is given twice")
        names.add(name)
        weight = variant.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT:
            raise RequestError(f"{where}.weight", f"must be an integer between 1 and {MAX_WEIGHT}")
        try:
            message = parse_message(variant.get("message"), options)
        except RequestError as exc:
            raise RequestError(f"{where}.{exc.field or 'message'}", exc.reason) from exc
        if index and message.category != category:
            # Opt-outs are applied as the audience is read and caps decided per chunk, both before a device's
            # variant is drawn: one category for the whole campaign keeps them right for every variant.
            raise RequestError(f"{where}.message.category", f"must be the same in every variant ({category!r})")
        category = message.category if not index else category
        stored.append({"name": name, "weight": weight, "message": variant["message"]})
    return stored


def parse_control_percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_CONTROL_PERCENT:
        raise RequestError("control_percent", f"must be a number between 0 and {MAX_CONTROL_PERCENT}")
    return float(value)


def split_of(campaign_id: str, variants: Sequence[Mapping[str, Any]] | None, control_percent: Any,
             options: Options) -> Split | None:
    """The split a stored campaign carries (None: neither variants nor a control group); raises on a stored
    value this version cannot read (the record then fails that campaign alone)."""
    if not variants and not control_percent:
        return None
    parsed = tuple(
        Variant(str(v["name"]), int(v["weight"]), parse_message(v["message"], options)) for v in variants or ()
    )
    return Split(campaign_id, parsed, float(control_percent or 0.0))


def groups_of(campaign_id: str, variants: Sequence[Mapping[str, Any]] | None, control_percent: Any) -> Split | None:
    """The split of a stored campaign for telling groups apart only (names and weights: what assignment reads),
    without parsing its messages: receipts find the group of the device they name."""
    if not variants and not control_percent:
        return None
    named = tuple(Variant(str(v["name"]), int(v["weight"]), Message()) for v in variants or ())
    return Split(campaign_id, named, float(control_percent or 0.0))
