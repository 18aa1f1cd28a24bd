"""The shape of the model's answer, and its strict conversion into a `Decision`.

The schema sent to the model is deliberately flat and bounded: every string has a
maxLength and every array a maxItems (unbounded schemas make small models loop inside a
string), and an action is one object with a `kind` and a few optional parameters instead
of the full discriminated union, whose grammar is heavy. Whatever the model fills in is
then validated again into `models.Action` — the reduced schema is never trusted on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from macha_obs.errors import InvalidInput
from macha_obs.models import (
    Action,
    Diagnostic,
    InvalidUnitName,
    Investigate,
    Proposal,
    canonical_unit_name,
    parse_action,
)

ActionKind = Literal[
    "restart_unit",
    "start_unit",
    "reset_failed",
    "journal_vacuum",
    "nix_gc",
    "nix_rebuild",
    "nix_rollback",
    "investigate",
    "config_change",
    "harden_unit",
]
ToolName = Literal[
    "unit_status",
    "journal_tail",
    "disk_usage",
    "top_processes",
    "listening_sockets",
    "failed_units",
]
# harden_unit: one catalogue setting (models/hardening_catalogue.json) and one of the
# values the catalogue allows it; the pair is validated again against the catalogue.
# tests/test_hardening_patch.py holds these lists to the catalogue.
SettingName = Literal[
    "",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ProtectKernelTunables",
    "RestrictAddressFamilies",
    "PrivateDevices",
    "ProtectControlGroups",
    "ProtectKernelModules",
    "RestrictSUIDSGID",
    "LockPersonality",
]
SettingValue = Literal[
    "",
    "yes",
    "strict",
    "full",
    "read-only",
    "AF_UNIX",
    "AF_UNIX AF_INET AF_INET6",
    "AF_UNIX AF_NETLINK AF_INET AF_INET6",
]
EVIDENCE_MAX = 100
M = TypeVar("M", bound=BaseModel)
_UNIT_KINDS = {"restart_unit", "start_unit", "reset_failed"}
_UNIT_TOOLS = {"unit_status", "journal_tail"}


class OutputInvalid(InvalidInput):
    """The model's answer is not a valid decision; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlmToolCall(_Strict):
    tool: ToolName
    unit: str = Field("", max_length=100, description="for unit_status and journal_tail")


class LlmAction(_Strict):
    kind: ActionKind
    unit: str = Field("", max_length=100, description="for unit actions and unit tools")
    tool: Literal["", ToolName] = Field("", description="for investigate")
    mode: Literal["dry-build", "test", "switch", "boot"] = "dry-build"
    # config_change: a file of the NixOS configuration, relative to its directory, and a
    # unified diff of it. Bounded well below ConfigChange's own 8000: the whole answer has
    # a 1,000-token budget, and llama.cpp's grammar for a string bounded at 1,500 crashed
    # the server (tests/test_llm_real.py); a reviewable change is short anyway.
    path: str = Field(
        "", max_length=200, description="config_change only: file relative to the config dir"
    )
    diff: str = Field(
        "", max_length=1000, description="config_change only: unified diff of that one file"
    )
    setting: SettingName = Field("", description="harden_unit only: a catalogue setting")
    value: SettingValue = Field("", description="harden_unit only: a value of that setting")


class LlmProposal(_Strict):
    action: LlmAction
    reason: str = Field("", max_length=160)
    evidence: list[str] = Field(default_factory=list, max_length=2)


class LlmDecision(_Strict):
    assessment: Literal["healthy", "degraded", "failing", "unknown"]
    severity: Literal["info", "warning", "critical"]
    summary: str = Field(max_length=200)
    root_cause: str = Field(max_length=200)
    # Grammar-constrained decoders ignore minimum/maximum (SmolLM2 answered 3): a fixed
    # set of values is something the grammar can enforce. Validation still checks 0..1.
    confidence: float = Field(ge=0.0, le=1.0, json_schema_extra={"enum": [0, 0.25, 0.5, 0.75, 1]})
    proposals: list[LlmProposal] = Field(default_factory=list, max_length=3)


class LlmStep(LlmDecision):
    """An answer on a step that may still investigate: tool calls come first."""

    tool_calls: list[LlmToolCall] = Field(default_factory=list, max_length=2)


def wire_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema to send: refs inlined, titles dropped, every property required
    (grammar-constrained decoders then emit a fixed shape), evidence items bounded."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            out = {k: walk(v) for k, v in node.items() if k not in ("title", "default")}
            if out.get("type") == "object" and "properties" in out:
                out["required"] = list(out["properties"])
                out["additionalProperties"] = False
            if out.get("type") == "array" and out.get("items", {}).get("type") == "string":
                out["items"]["maxLength"] = EVIDENCE_MAX
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    if "tool_calls" in result.get("properties", {}):  # tool calls first: look, then conclude
        props = result["properties"]
        result["properties"] = {"tool_calls": props.pop("tool_calls"), **props}
        result["required"] = list(result["properties"])
    return result


def output_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def parse_output(text: str, model: type[M]) -> M:
    """Strictly parse the model's text; raise OutputInvalid (never salvage by regex).

    strict=False only admits raw control characters inside strings, which llama.cpp's
    JSON grammar lets through; the structure itself must be exact.
    """
    try:
        data = json.loads(text, strict=False)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OutputInvalid(f"not JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise OutputInvalid(f"does not match the schema: {where}: {first['msg']}") from exc


def to_action(a: LlmAction) -> Action:
    """Validate a reduced action into the real `Action` union (units canonicalised)."""
    data: dict[str, Any] = {"kind": a.kind}
    try:
        if a.kind in _UNIT_KINDS:
            data["unit"] = canonical_unit_name(a.unit)
        elif a.kind == "investigate":
            data["diagnostic"] = to_diagnostic(
                LlmToolCall(tool=a.tool or "failed_units", unit=a.unit)
            )
        elif a.kind == "nix_rebuild":
            data["mode"] = a.mode
        elif a.kind == "config_change":
            data.update(path=a.path, diff=_ended(a.diff))
        elif a.kind == "harden_unit":
            setting = {"key": a.setting, "value": a.value}
            data.update(unit=canonical_unit_name(a.unit), settings=[setting])
        return parse_action(data)
    except (InvalidUnitName, ValidationError) as exc:
        raise OutputInvalid(f"invalid {a.kind} action: {first_error(exc)}") from exc


def _ended(diff: str) -> str:
    """A diff with its last line ended: JSON strings from models often drop the final
    newline, which patch(1) and git apply need. Nothing else is changed: what is queued
    is what a person exports."""
    return diff if not diff or diff.endswith("\n") else diff + "\n"


def to_diagnostic(call: LlmToolCall) -> Diagnostic:
    """A tool call as one of the allowlisted diagnostics; InvalidUnitName/ValidationError."""
    data: dict[str, Any] = {"tool": call.tool}
    if call.tool in _UNIT_TOOLS:
        data["unit"] = canonical_unit_name(call.unit)
    inv = Investigate.model_validate({"diagnostic": data})
    return inv.diagnostic


def to_proposals(decision: LlmDecision) -> list[Proposal]:
    """The model's proposals as typed Proposals, each distinct action once: small models
    repeat themselves, and a repeated proposal must not run twice."""
    out: dict[str, Proposal] = {}
    for p in decision.proposals:
        action = to_action(p.action)
        key = action.model_dump_json()
        if key not in out:
            out[key] = Proposal(
                action=action, reason=p.reason, evidence=[e[:EVIDENCE_MAX] for e in p.evidence]
            )
    return list(out.values())


def first_error(exc: Exception) -> str:
    """The first problem of a validation error, as 'field.path: message'."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)
