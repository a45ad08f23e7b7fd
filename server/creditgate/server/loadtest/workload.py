"""What the load generator sends: the feature mix, which customer each call is for (Zipf skew), and requests
pre-encoded so the generator spends its time on the wire, not on building messages."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from creditgate.server.domain.catalog import DimensionCost, load_catalog
from creditgate.server.errors import InvalidArgument
from creditgate.v1 import metering_pb2

# Field 5 of CheckAndDebitRequest (request_id), wire type 2: appended to a pre-encoded request per call.
REQUEST_ID_TAG = bytes([5 << 3 | 2])


@dataclass(frozen=True, slots=True)
class FeatureChoice:
    """One entry of the mix: a feature, the dimensions it is sent with, and its share of the calls."""

    feature: str
    dimensions: tuple[tuple[str, str], ...]
    weight: int
    quantity: int = 1

    def label(self) -> str:
        """The choice as parse_mix reads it (without its weight)."""
        dims = ",".join(f"{name}={value}" for name, value in self.dimensions)
        label = f"{self.feature}[{dims}]" if dims else self.feature
        return f"{label}*{self.quantity}" if self.quantity != 1 else label


def parse_mix(text: str) -> list[FeatureChoice]:
    """`email_unlock:60,mobile_unlock[quality=verified]:10,contact_export*5:30` (feature[dims]*quantity:weight)."""
    choices = []
    for part in _split_top_level(text):
        spec, _, weight_text = part.rpartition(":")
        if not spec or not weight_text.isdigit() or int(weight_text) < 1:
            raise InvalidArgument(
                f"mix entry {part!r} must be feature[dim=value,...]*quantity:weight", field="features"
            )
        spec, _, quantity_text = spec.partition("*")
        quantity = int(quantity_text) if quantity_text.isdigit() else 1
        feature, _, dims_text = spec.partition("[")
        dimensions = tuple(
            (name, value)
            for name, _, value in (item.partition("=") for item in dims_text.rstrip("]").split(",") if item)
        )
        choices.append(FeatureChoice(feature.strip(), dimensions, int(weight_text), quantity))
    if not choices:
        raise InvalidArgument("the feature mix is empty", field="features")
    return choices


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside [...] brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def default_mix(catalog_yaml: str, plan: str) -> list[FeatureChoice]:
    """Every feature the plan enables, equally weighted, with the first value of a priced dimension and a
    per-customer value for any other dimension (so per-mailbox caps apply as they would in an app)."""
    catalog = load_catalog(catalog_yaml).catalog
    if plan not in catalog.plans:
        raise InvalidArgument(f"plan {plan!r} is not in the server's catalog", field="plan")
    choices = []
    for key, entitlement in catalog.plans[plan].entitlements.items():
        if not entitlement.enabled:
            continue
        feature = catalog.features[key]
        dims: list[tuple[str, str]] = []
        if isinstance(feature.credits, DimensionCost):
            dims.append((feature.credits.by, next(iter(feature.credits.values))))
        dims.extend((name, "loadtest") for name in feature.dimensions)
        choices.append(FeatureChoice(key, tuple(dims), 1))
    return choices


class CustomerPicker:
    """Picks customer indexes 0..n-1 with Zipf skew s (0: uniform; 1.1: a few hot customers take most calls)."""

    def __init__(self, count: int, skew: float, seed: int) -> None:
        self._random = random.Random(seed)
        self._count = count
        self._cumulative = list(itertools.accumulate(1 / (rank**skew) for rank in range(1, count + 1))) if skew else []

    def pick(self) -> int:
        if not self._cumulative:
            return self._random.randrange(self._count)
        return bisect.bisect_left(self._cumulative, self._random.random() * self._cumulative[-1])


class MixPicker:
    def __init__(self, choices: list[FeatureChoice], seed: int) -> None:
        self._random = random.Random(seed)
        self._weights = list(itertools.accumulate(choice.weight for choice in choices))

    def pick(self) -> int:
        # What random.choices does with cum_weights, without building a list per pick (the same picks per seed).
        return bisect.bisect(self._weights, self._random.random() * self._weights[-1], 0, len(self._weights) - 1)


def encode_request(customer_id: str, choice: FeatureChoice) -> bytes:
    """A CheckAndDebitRequest without its request_id; `with_request_id` completes it."""
    request = metering_pb2.CheckAndDebitRequest(
        customer_id=customer_id, feature=choice.feature, dimensions=dict(choice.dimensions)
    )
    if choice.quantity != 1:
        request.quantity = choice.quantity
    return request.SerializeToString()


def with_request_id(encoded: bytes, request_id: bytes) -> bytes:
    # request_id is short ASCII (< 128 bytes), so its length is a one-byte varint.
    return encoded + REQUEST_ID_TAG + bytes([len(request_id)]) + request_id


def customer_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"
