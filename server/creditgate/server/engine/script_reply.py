"""A script's answer, by name. Every engine script answers with lib.lua's `reply{status = ..., field = value, ...}`:
a Redis map, which a RESP2 connection (the hot path's wire) receives as name, value, name, value, ... and a RESP3 one
(redis-py's default) as a map. Read by name, a field the script
moved cannot hand its value to another; a field it no longer sends is an error naming it, not a wrong number."""

from __future__ import annotations

from typing import Any

from creditgate.server.errors import InternalError


class ScriptReply:
    """One script's reply: its `status`, and the fields that status carries."""

    __slots__ = ("_fields", "script", "status")

    def __init__(self, script: str, reply: Any) -> None:
        self.script = script
        if isinstance(reply, dict):
            self._fields: dict[str, Any] = reply
        elif isinstance(reply, list) and len(reply) % 2 == 0:
            names_and_values = iter(reply)
            self._fields = dict(zip(names_and_values, names_and_values, strict=False))
        else:
            raise InternalError(f"script {script} answered {reply!r}, not a reply by name")
        status = self._fields.get("status")
        if not isinstance(status, str):
            raise InternalError(f"script {script} answered without a status: {reply!r}")
        self.status = status

    def __getitem__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise InternalError(f"script {self.script} answered {self.status!r} without {name!r}") from None

    def int(self, name: str) -> int:
        return int(self[name])

    def __repr__(self) -> str:
        return f"ScriptReply({self.script!r}, {self._fields!r})"
