"""The approvals pages as HTML, pure: the list, one item, the login form, a refusal.

Plain server-rendered HTML5 with one inline style sheet (allowed by its hash in the
Content-Security-Policy app.py sends) and no script, image, font or other asset: the
host may have no internet, and a phone without JavaScript must still work. Every value
that came from an alert, a log, a model or a person goes through `esc`: control and
bidi characters become visible escapes (terminal.inert) and then HTML is escaped,
quotes included, so no text can open a tag, leave an attribute or reorder a line.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass

from macha_obs.models import (
    PATCH_ACTIONS,
    SETTINGS_PATCHES,
    UNIT_ACTIONS,
    Approval,
    ApprovalStatus,
    ConfigChange,
    describe_action,
)
from macha_obs.terminal import inert

CSS = """\
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--mute:#59636e;--line:#d0d7de;\
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--card:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mute:#9198a1;\
--line:#3d444d;--card:#151b23;--ok:#3fb950;--warn:#d29922;--bad:#f85149}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:52rem;padding:1rem;font:16px/1.5 system-ui,sans-serif;\
color:var(--fg);background:var(--bg);overflow-wrap:anywhere}
h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
a{color:inherit}.mute{color:var(--mute)}
.card{border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:.8rem 0;\
background:var(--card)}
.badge{display:inline-block;border-radius:1rem;padding:0 .6rem;font-size:.85rem;\
border:1px solid currentColor}
.risk-low,.st-executed{color:var(--ok)}.risk-medium,.st-pending{color:var(--warn)}
.risk-high,.risk-forbidden,.st-failed,.st-refused,.st-interrupted{color:var(--bad)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0}
dt{color:var(--mute)}dd{margin:0}
@media (max-width:560px){dl{gap:.3rem .7rem}dt{font-size:.9rem}}
pre{white-space:pre-wrap;font-size:.85rem;margin:0}
ul{margin:.2rem 0;padding-left:1.2rem}
.actions{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-end}
.actions form{flex:1 1 16rem}
button{font:inherit;font-weight:600;width:100%;min-height:3rem;border-radius:8px;\
border:1px solid var(--line);cursor:pointer}
.approve{background:var(--ok);color:#fff}.reject{background:var(--card);color:var(--fg)}
input[type=text],input[type=password]{font:inherit;width:100%;min-height:2.6rem;\
padding:.3rem .5rem;margin:.3rem 0 .6rem;border:1px solid var(--line);border-radius:6px;\
background:var(--bg);color:var(--fg)}
.banner{border-left:4px solid var(--warn);padding:.6rem 1rem;background:var(--card);\
margin:.8rem 0}.banner.good{border-color:var(--ok)}.banner.bad{border-color:var(--bad)}
"""
# For the Content-Security-Policy: this style sheet and no other.
CSS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()


def esc(text: object) -> str:
    """Untrusted text for HTML: controls made visible, then escaped (quotes too)."""
    return html.escape(inert(text), quote=True)


@dataclass(frozen=True)
class Form:
    """What a decision form carries: where it posts, and its hidden fields."""

    action: str  # a path we built, escaped when rendered
    hidden: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ItemView:
    """Everything the item page shows beside the item itself."""

    approval: Approval
    approve: Form | None  # None: nothing to decide (not pending) or no credential to act
    reject: Form | None
    history: str | None = None
    outcome: str | None = None  # what the last POST did, for the page after the redirect
    outcome_good: bool = False
    list_path: str | None = None  # shown only to a holder of the token


def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=referrer content="no-referrer">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>"
    ).encode()


def _badge(kind: str, value: str) -> str:
    return f'<span class="badge {kind}-{esc(value)}">{esc(value)}</span>'


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already (escaped by the caller)."""
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows) + "</dl>"


def _when(approval: Approval) -> str:
    return (
        f"{approval.created_at:%Y-%m-%d %H:%M:%S} UTC, expires "
        f"{approval.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    )


def rechecks(approval: Approval) -> list[str]:
    """What the policy judges again at the moment of approval (invariants 3, 5, 7, 12)."""
    action = approval.action
    if isinstance(action, PATCH_ACTIONS):
        return [
            "Nothing runs: approving marks the change read. Apply the patch by hand "
            f"(macha-approve export {approval.id}), then rebuild or reload."
        ]
    checks = []
    if isinstance(action, UNIT_ACTIONS):
        checks += [
            f"{action.unit} is not a protected unit (remote access, networking, D-Bus, "
            "the sidecar, and your protected_units).",
            f"Scope lock: systemd still shows the problem with {action.unit}, and the "
            "incident's own evidence names it. If the problem is gone, nothing runs and "
            "the item is cancelled.",
        ]
    checks += [
        "Rate limits for this action and this host.",
        "The circuit breaker, and any pause a person set (macha-obs pause).",
        "The approval is carried out once: a second approval, here or with "
        "macha-approve, does nothing.",
    ]
    return checks


def _decision_forms(view: ItemView) -> str:
    if view.approve is None or view.reject is None:
        return ""

    def hidden(form: Form) -> str:
        return "".join(
            f'<input type=hidden name="{esc(k)}" value="{esc(v)}">' for k, v in form.hidden
        )

    label = "Mark as read" if isinstance(view.approval.action, PATCH_ACTIONS) else "Approve"
    return (
        '<div class="actions">'
        f'<form method=post action="{esc(view.approve.action)}">{hidden(view.approve)}'
        f"<button class=approve type=submit name=decision value=approve>{label}</button></form>"
        f'<form method=post action="{esc(view.reject.action)}">{hidden(view.reject)}'
        "<label for=reason>Reason for rejecting (kept in the audit log)</label>"
        "<input type=text id=reason name=reason maxlength=500 autocomplete=off>"
        "<button class=reject type=submit name=decision value=reject>Reject</button></form>"
        "</div>"
    )


def _outcome(view: ItemView) -> str:
    a = view.approval
    if view.outcome is not None:
        tone = "good" if view.outcome_good else "bad"
        return f'<div class="banner {tone}" role=status>{esc(view.outcome)}</div>'
    if a.status is ApprovalStatus.PENDING:
        return ""
    tone = "good" if a.status is ApprovalStatus.EXECUTED else "bad"
    text = f"This item is {a.status.value}: {a.note or '-'}. Nothing is left to decide."
    return f'<div class="banner {tone}" role=status>{esc(text)}</div>'


def item_page(view: ItemView) -> bytes:
    a = view.approval
    incidents = ", ".join(a.incident_ids) or a.incident_id
    shown = a.action.model_dump(mode="json", exclude={"diff"})
    rows = [
        ("Action", f"<strong>{esc(describe_action(a.action))}</strong>"),
        ("Risk", _badge("risk", a.risk.value)),
        ("Status", _badge("st", a.status.value)),
        ("Incident", esc(incidents)),
        ("Queued", esc(_when(a))),
        ("Why queued", esc(a.reason)),
    ]
    if view.history:
        rows.append(("History", esc(view.history)))
    if a.decided_by or a.note:
        rows.append(("Decided", esc(f"by {a.decided_by or '-'}: {a.note or '-'}")))
    evidence = "".join(f"<li>{esc(line)}</li>" for line in a.evidence) or "<li>-</li>"
    checks = "".join(f"<li>{esc(line)}</li>" for line in rechecks(a))
    diff = ""
    if isinstance(a.action, ConfigChange):
        diff = f"<h2>Diff</h2><div class=card><pre>{esc_block(a.action.diff)}</pre></div>"
    if isinstance(a.action, SETTINGS_PATCHES):
        why = "".join(f"<li>{esc(line)}</li>" for line in a.action.explain())
        diff = (
            f"<h2>Settings</h2><div class=card><ul>{why}</ul></div>"
            f"<h2>Drop-in {esc(a.action.dropin_path)}</h2>"
            f"<div class=card><pre>{esc_block(a.action.dropin())}</pre></div>"
        )
    back = ""
    if view.list_path:
        back = f'<p><a href="{esc(view.list_path)}">All pending approvals</a></p>'
    body = (
        f"{back}<h1>Approval {a.id}: {esc(describe_action(a.action))}</h1>"
        f"{_outcome(view)}<div class=card>{_rows(rows)}</div>"
        f"<h2>Evidence</h2><div class=card><ul>{evidence}</ul></div>"
        # the buttons come after what they act on and why, before the details
        f"{_decision_forms(view)}"
        f"<h2>At approval the policy checks again</h2><div class=card><ul>{checks}</ul></div>"
        f"{diff}<h2>The action</h2><div class=card><pre>"
        f"{esc(json.dumps(shown, separators=(', ', ': ')))}</pre></div>"
    )
    return page(f"Approval {a.id}", body)


def esc_block(text: str) -> str:
    """A multi-line block (a diff): each line made inert on its own, newlines kept."""
    return "\n".join(esc(line) for line in text.split("\n"))


def list_page(items: list[tuple[Approval, str]], *, logout_path: str) -> bytes:
    """The pending items, each with its page's path."""
    cards = []
    for a, path in items:
        cards.append(
            f'<div class=card><a href="{esc(path)}"><strong>{a.id}: '
            f"{esc(describe_action(a.action))}</strong></a> {_badge('risk', a.risk.value)}"
            f"<div class=mute>{esc(_when(a))}</div><div>{esc(a.reason)}</div></div>"
        )
    count = len(items)
    lead = (
        f"{count} action{'s' if count != 1 else ''} waiting for a person."
        if count
        else ("Nothing is waiting for approval.")
    )
    body = (
        f"<h1>Pending approvals</h1><p>{lead}</p>{''.join(cards)}"
        f'<form method=post action="{esc(logout_path)}"><p>'
        "<button class=reject type=submit>Log out</button></p></form>"
    )
    return page("Pending approvals", body)


def login_page(action: str, *, message: str = "", next_path: str = "") -> bytes:
    note = f'<div class="banner bad" role=alert>{esc(message)}</div>' if message else ""
    after = f'<input type=hidden name="next" value="{esc(next_path)}">' if next_path else ""
    body = (
        f"<h1>Approvals: log in</h1>{note}"
        "<p>Paste the sidecar's webhook token (<code>macha-obs webhook-token</code> prints "
        "where it is). It is checked here and starts a session for this page, for 12 "
        "hours or until you log out.</p>"
        f'<form method=post action="{esc(action)}">{after}<label for=token>Token</label>'
        "<input type=password id=token name=token autocomplete=current-password required>"
        "<button class=approve type=submit>Log in</button></form>"
    )
    return page("Approvals: log in", body)


def refusal_page(status: str, message: str, *, login_path: str | None = None) -> bytes:
    """A clear page for every refusal: what happened, and nothing was done."""
    login = f'<p><a href="{esc(login_path)}">Log in with the token</a></p>' if login_path else ""
    body = f"<h1>{esc(status)}</h1><div class='banner bad' role=alert>{esc(message)}</div>{login}"
    return page(status, body)
