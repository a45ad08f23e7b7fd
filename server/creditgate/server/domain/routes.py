"""The gateway's routes file: which HTTP requests are which feature, and where the customer, the request id, the
quantity and the dimensions are read from. Loaded and checked once at start; an error names the file's line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from creditgate.server.domain.catalog import Catalog
from creditgate.server.errors import InvalidArgument
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_ROUTES_BYTES = 1 << 20
# An HTTP method is a token (RFC 9110); routes name them in upper case, as requests carry them.
METHOD_PATTERN = re.compile(r"^[A-Z][A-Z0-9-]{0,31}$")
PARAM_PATTERN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
# A literal path segment: the characters RFC 3986 allows in a path segment (pchar); requests are matched as sent,
# percent-escapes and all.
LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """Where one value of a request is read from: exactly one of these."""

    header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
    query: str | None = Field(default=None, min_length=1, max_length=128)
    # A {name} of the route's path template.
    path: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    # A claim of the bearer JWT in `authorization` (or in jwt_header), which the gateway has already verified.
    jwt_claim: str | None = Field(default=None, min_length=1, max_length=128)
    jwt_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
    # A fixed value (e.g. a dimension every request of the route has).
    value: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        kinds = [name for name in ("header", "query", "path", "jwt_claim", "value") if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of header, query, path, jwt_claim, value")
        if self.jwt_header is not None and self.jwt_claim is None:
            raise ValueError("jwt_header goes with jwt_claim")
        return self


class Route(_Model):
    # Unset or "*": any method.
    method: str = "*"
    path: str = Field(min_length=1, max_length=1024)
    feature: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    quantity: Source | None = None
    dimensions: dict[str, Source] = Field(default={}, max_length=16)

    @model_validator(mode="after")
    def _well_formed(self) -> Route:
        if self.method != "*" and not METHOD_PATTERN.match(self.method):
            raise ValueError(f"method must be an HTTP method in upper case (e.g. POST) or '*', not {self.method!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
        names = []
        for segment in self.path.split("/")[1:]:
            param = PARAM_PATTERN.fullmatch(segment)
            if param is not None:
                names.append(param.group(1))
            elif not LITERAL_SEGMENT.match(segment):
                raise ValueError(f"path segment {segment!r}: a {{name}} stands for a whole segment")
        if len(set(names)) != len(names):
            raise ValueError(f"path {self.path!r} names a parameter twice")
        for source in (self.quantity, *self.dimensions.values()):
            if source is not None and source.path is not None and source.path not in names:
                raise ValueError(f"{{{source.path}}} is not a parameter of path {self.path!r}")
        return self


class RoutesFile(_Model):
    customer: Source
    request_id: Source | None = None
    unmatched: Literal["allow", "deny"]
    routes: list[Route] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _customer_from_the_request(self) -> RoutesFile:
        for name, source in (("customer", self.customer), ("request_id", self.request_id)):
            if source is not None and (source.path is not None or source.value is not None):
                raise ValueError(f"{name} is read from a header, a query parameter or a JWT claim")
        return self


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: Route
    index: int
    line: int
    pattern: re.Pattern[str]

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.route.method not in ("*", method):
            return None
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


class RouteTable:
    """The checked routes in file order; the first route that matches a request decides it."""

    def __init__(self, spec: RoutesFile, lines: list[int]) -> None:
        self.spec = spec
        self.routes = [
            CompiledRoute(route, index, line, _template_pattern(route.path))
            for index, (route, line) in enumerate(zip(spec.routes, lines, strict=True))
        ]

    def match(self, method: str, path: str) -> tuple[CompiledRoute, dict[str, str]] | None:
        for compiled in self.routes:
            params = compiled.match(method, path)
            if params is not None:
                return compiled, params
        return None

    def check_against(self, catalog: Catalog, where: str = "routes file") -> None:
        """Every route names a feature of the catalog and only its dimensions; InvalidArgument naming the line."""
        for compiled in self.routes:
            route = compiled.route
            feature = catalog.features.get(route.feature)
            prefix = f"{where} line {compiled.line}: routes.{compiled.index}"
            if feature is None:
                raise InvalidArgument(
                    f"{prefix}.feature: {route.feature!r} is not a feature of the catalog",
                    field="routes",
                    reason="INVALID_ROUTES",
                )
            unknown = sorted(set(route.dimensions) - feature.dimension_names())
            if unknown:
                allowed = ", ".join(sorted(feature.dimension_names())) or "none"
                raise InvalidArgument(
                    f"{prefix}.dimensions: {unknown[0]!r} is not a dimension of {route.feature} (allowed: {allowed})",
                    field="routes",
                    reason="INVALID_ROUTES",
                )


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = []
    for segment in template.split("/")[1:]:
        param = PARAM_PATTERN.fullmatch(segment)
        parts.append(f"(?P<{param.group(1)}>[^/]+)" if param else re.escape(segment))
    return re.compile("/" + "/".join(parts))


def load_routes(source: str, where: str = "routes file") -> RouteTable:
    """Parse and check a routes file; InvalidArgument naming the line and place of the first problem."""
    if len(source.encode()) > MAX_ROUTES_BYTES:
        raise _invalid(f"{where} is larger than 1 MiB")
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        document = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise _invalid(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(document, dict) or root is None:
        raise _invalid(f"{where} must be a YAML mapping (customer, unmatched, routes)")
    try:
        spec = RoutesFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [part for part in first["loc"] if not str(part).startswith("function-")]
        place = ".".join(str(part) for part in loc)
        message = first["msg"].removeprefix("Value error, ")
        raise _invalid(f"{where} line {_line_of(root, loc)}: {place + ': ' if place else ''}{message}") from exc
    route_nodes = _child(root, "routes")
    lines = [node.start_mark.line + 1 for node in getattr(route_nodes, "value", [])]
    return RouteTable(spec, lines)


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, field="routes", reason="INVALID_ROUTES")


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, yaml.MappingNode):
        return next((value for key, value in node.value if key.value == str(part)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _line_of(root: yaml.Node, loc: list[Any]) -> int:
    """The line of the deepest node on the error's path that the file has (a missing key: its parent's)."""
    node: Any = root
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1
