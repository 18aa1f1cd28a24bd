"""The shapes of secrets, one rule each, in the order they apply (rules 1 to 7 of
`redact.py`, which says what each catches and what is kept on purpose); the high-entropy
rule that follows them and the journal's multi-line blocks are `redact.py`'s own.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Replacement = str | Callable[[re.Match[str]], str]

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: Replacement


# ------------------------------------------------------------------ 1. armored blocks

ARMOR_BEGIN = re.compile(r"-{4,5} ?BEGIN (?P<kind>[A-Z0-9][A-Z0-9 ]*?) ?-{4,5}")
_ARMOR_BLOCK = re.compile(
    r"-{4,5} ?BEGIN (?P<kind>[A-Z0-9][A-Z0-9 ]*?) ?-{4,5}"
    r".*?(?:-{4,5} ?END (?P=kind) ?-{4,5}|\Z)",
    re.S,
)
PUTTY_BEGIN = re.compile(r"PuTTY-User-Key-File-\d+:")
_PUTTY_BLOCK = re.compile(r"PuTTY-User-Key-File-\d+:.*?(?:Private-MAC: *[0-9a-fA-F]*|\Z)", re.S)
PUTTY_END = re.compile(r"Private-MAC:")


def _armor(match: re.Match[str]) -> str:
    return f"[REDACTED {match.group('kind')}]"


# ------------------------------------------------------------------ 3. headers

_HEADER = re.compile(
    r"(?i)(?P<open>[\"']?)\b(?P<key>(?:proxy-)?authorization|set-cookie|cookie)"
    r"(?P<sep>(?:\\?[\"'])?\s*[:=]\s*(?P<vq>\\?[\"'])?)"
    r"(?:(?P<scheme>bearer|basic|digest|token|negotiate|ntlm|aws4-hmac-sha256|apikey|sso-key)"
    r"\s+)?(?!\[REDACTED)(?P<rest>[^\r\n]+)"
)


def _header(match: re.Match[str]) -> str:
    quote = (match.group("vq") or "").lstrip("\\")
    if not quote and match.group("open") and not any(q in match.group("sep") for q in "\"'"):
        quote = match.group("open")  # curl -H 'Authorization: Basic …'
    rest = match.group("rest")
    tail = rest[rest.find(quote) :] if quote and quote in rest else ""
    if quote and tail:
        tail = ("\\" if rest[: rest.find(quote)].endswith("\\") else "") + tail
    scheme = f"{match.group('scheme')} " if match.group("scheme") else ""
    head = match.group("open") + match.group("key") + match.group("sep")
    return f"{head}{scheme}{REDACTED}{tail}"


# ------------------------------------------------------------------ 4. command lines

_CLI_KEYWORDS = (
    r"password|passwd|passphrase|pass|pwd|secret|token|auth|credentials?|api[-_]?key|apikey"
    r"|access[-_]?key|secret[-_]?(?:access[-_]?)?key|private[-_]?key|client[-_]?secret"
    r"|auth[-_]?token|access[-_]?token"
)
_VALUE = r"(?P<value>\"[^\"]*\"|'[^']*'|(?!\[REDACTED)[^\s\"']\S*)"


def _value_only(match: re.Match[str]) -> str:
    """Everything of the match but the `value` group, which becomes the placeholder."""
    start, end = match.span("value")
    text = match.group(0)
    base = match.start()
    quote = match.group("value")[0] if match.group("value")[:1] in "\"'" else ""
    return text[: start - base] + f"{quote}{REDACTED}{quote}" + text[end - base :]


def _user_password(match: re.Match[str]) -> str:
    """`-u user:pw`: the password replaced, the user kept; `-u 1000:1000` is a uid:gid."""
    user, password = match.group("user"), match.group("pw")
    if user.isdigit() and password.isdigit():
        return match.group(0)
    start, end = match.span("pw")
    text, base = match.group(0), match.start()
    return text[: start - base] + REDACTED + text[end - base :]


def _quoted_user_password(match: re.Match[str]) -> str:
    group = "qpw" if match.group("qpw") is not None else "spw"
    start, end = match.span(group)
    text, base = match.group(0), match.start()
    return text[: start - base] + REDACTED + text[end - base :]


def _tool_flag(tools: str, flag: str) -> re.Pattern[str]:
    """`tool … -f VALUE` (or `-fVALUE`) within one command of a line."""
    return re.compile(rf"(?<![\w-])(?:{tools})\b[^|;&\n]{{0,300}}?\s{flag}\s*" + _VALUE)


# ------------------------------------------------------------------ 5. token formats

# Public formats (vendors' documentation); lengths a little below the real ones, so a
# token cut short by a log line is still caught.
_TOKENS: tuple[tuple[str, str], ...] = (
    ("GitHub token", r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"),
    ("GitLab token", r"gl(?:pat|dt|ptt|rt|cbt|oas|soat|ffct|imt|agent|ft|wt)-[\w-]{20,}"),
    ("Slack token", r"xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,}"),
    ("AWS access key id", r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}"),
    ("Google API key", r"AIza[\w-]{35}"),
    ("Google OAuth token", r"ya29\.[\w-]{20,}|GOCSPX-[\w-]{20,}"),
    ("Stripe key", r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{20,}"),
    ("OpenAI key", r"sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?[\w-]{20,}"),
    ("JWT", r"eyJ[\w-]{8,}\.[\w-]{8,}(?:\.[\w-]*)?"),
    ("npm token", r"npm_[A-Za-z0-9]{30,}"),
    ("PyPI token", r"pypi-[\w-]{50,}"),
    ("Twilio key", r"(?:AC|SK)[0-9a-f]{32}"),
    ("SendGrid key", r"SG\.[\w-]{16,}\.[\w-]{16,}"),
    ("Hugging Face token", r"hf_[A-Za-z0-9]{30,}"),
    ("Docker token", r"dckr_(?:pat|oat)_[\w-]{20,}"),
    ("Vault token", r"hv[sbr]\.[\w-]{20,}"),
    ("age secret key", r"AGE-SECRET-KEY-1[0-9A-Z]{50,}"),
    ("Tailscale key", r"tskey-[A-Za-z0-9-]{16,}"),
    ("DigitalOcean token", r"do[opr]_v1_[a-f0-9]{64}"),
    ("Shopify token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    ("Atlassian token", r"ATATT3[\w=-]{20,}"),
    ("Telegram bot token", r"\d{8,10}:AA[\w-]{30,}"),
    ("Mailgun key", r"key-[0-9a-f]{32}"),
    ("Mailchimp key", r"[0-9a-f]{32}-us\d{1,2}"),
    ("Grafana token", r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/=]{30,}"),
    ("New Relic key", r"NR(?:AK|II|JS)-[A-Za-z0-9]{20,}"),
    ("Linear key", r"lin_(?:api|oauth)_[A-Za-z0-9]{30,}"),
    ("Databricks token", r"dapi[a-f0-9]{32}"),
    ("Doppler token", r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{30,}"),
    ("Postman key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}"),
    ("Pulumi token", r"pul-[a-f0-9]{40}"),
    ("Sentry token", r"sntr[ysu]_[\w=+/-]{30,}"),
    ("Terraform token", r"[A-Za-z0-9]{14}\.atlasv1\.[\w-]{60,}"),
)
_WEBHOOKS = re.compile(
    r"(?P<host>hooks\.slack\.com/(?:services|workflows|triggers)/|"
    r"discord(?:app)?\.com/api/webhooks/\d+/)[\w/-]{10,}"
)


def _token_rule(name: str, pattern: str) -> Rule:
    return Rule(name, re.compile(rf"(?<![\w-])(?:{pattern})(?![\w])"), f"[REDACTED {name}]")


# ------------------------------------------------------------------ 6. keys and values

# A key ends with one of these (as a suffix: dbPassword, AWS_SECRET_ACCESS_KEY) ...
_KEY_SUFFIX = (
    r"passwor[dt]|passwd|passphrase|secret|token|api[-_.]?key|apikey|access[-_.]?key"
    r"|secret[-_.]?key|private[-_.]?key|account[-_.]?key|signing[-_.]?key|master[-_.]?key"
    r"|encryption[-_.]?key|credentials?|signature"
)
# ... or is one of these as a word of its own (MYSQL_PWD, pass, auth; not bypass, oauth)
_KEY_WORD = r"pass|pwd|pw|psk|auth|sig|session[-_]?id|sessid"
_KEY_VALUE = re.compile(
    r"(?i)(?<![\w.-])(?P<key>[\w.-]*?(?:" + _KEY_SUFFIX + r"|(?<![a-z0-9])(?:" + _KEY_WORD + r"))"
    r"(?:[-_]?(?:hash|b64|base64|base|enc|value|str|string|plain|text))?\d*)(?![\w.-])"
    r"(?P<sep>(?:\\?[\"'])?\s*(?:[:=]|=>)\s*)"
    r"(?!\[REDACTED)(?P<value>(?P<q>\\?[\"'])(?P<qv>.*?)(?P=q)|\\?[\"']?[^\s\"',;&)}\]<>\\]+)"
)
_SAID_IS = re.compile(
    r"(?i)\b(?P<key>password|passphrase|passwd|secret)(?P<sep>\s+is\s+)"
    r"(?!(?:not|invalid|incorrect|wrong|expired|missing|empty|required|too|set|being|now|the"
    r"|a|an|unchanged|changed|correct|valid|weak|blank|null|none|ok|reset|stored|saved)\b)"
    r"(?!\[REDACTED)(?P<value>(?P<q>[\"'])(?P<qv>.*?)(?P=q)|[^\s\"',;&)}\]<>]+)"
)


# A password said in words without "is" (`secret Zq8!mK2#`, `password is now Tr0ub4dor&3`,
# `new password set to K9#mPq2v`): only a value shaped like a password (6+ characters
# with a letter, a digit, and a symbol or both cases), so ordinary words and counts stay.
_SAID_STRONG = re.compile(
    r"(?i)\b(?P<key>password|passphrase|passwd|secret|pin|token)"
    r"(?P<sep>(?:\s*:|\s+(?:is|was|now|still|set|changed|to|:|=))*\s+)"
    r"(?!\[REDACTED)(?P<value>(?=[^\s\"'<>]*[A-Za-z])(?=[^\s\"'<>]*[0-9])"
    r"(?-i:(?=[^\s\"'<>]*(?:[^\w\s\"'<>]|[A-Z][^\s\"'<>]*[a-z]|[a-z][^\s\"'<>]*[A-Z])))"
    r"[^\s\"'<>]{6,})"
)
# A bare 40-hex string: an old GitHub token, a SHA-1 HMAC key, a planted secret; but
# also a git commit or a SHA-1 digest, which stay when named as such just before it.
_HEX40 = re.compile(
    r"(?<![\w/.@:#=+-])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{40}(?![\w/+=-])"
)
_REVISION = re.compile(
    r"(?i)(?:commit|rev(?:ision)?|sha-?1|git|tree|parent|head|merge|checkout|branch|tag|ref"
    r"|object|nixpkgs|flake|version|fingerprint|digest|hash)\w*(?:\W+\w+){0,3}\W{0,3}$"
)


def _hex40(match: re.Match[str]) -> str:
    before = match.string[max(0, match.start() - 24) : match.start()]
    return match.group(0) if _REVISION.search(before) else "[REDACTED 40 hex]"


def _key_value(match: re.Match[str]) -> str:
    key, value = match.group("key"), match.group("value")
    if key.upper() in {"PWD", "OLDPWD"} and value.lstrip("\"'").startswith(("/", "~")):
        return match.group(0)  # the working directory (sudo's log line), not a password
    quote = match.group("q") or ""
    if not quote and value[:1] in "\"'\\":  # a quote that is never closed
        quote = value[: 2 if value[:1] == "\\" else 1]
        return f"{key}{match.group('sep')}{quote}{REDACTED}"
    return f"{key}{match.group('sep')}{quote}{REDACTED}{quote}"


# ------------------------------------------------------------------ the rules, in order

RULES: tuple[Rule, ...] = (
    Rule("armored block", _ARMOR_BLOCK, _armor),
    Rule("PuTTY key", _PUTTY_BLOCK, "[REDACTED PUTTY PRIVATE KEY]"),
    # 2. URL credentials: greedy up to the authority's last @, so a password with an @ in it
    Rule(
        "URL credentials",
        re.compile(
            r"(?i)(?P<scheme>(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}://)(?P<user>[^\s/?#@:\"'<>]*)"
            r":(?P<pw>[^\s/?#\"'<>]*)@"
        ),
        rf"\g<scheme>\g<user>:{REDACTED}@",
    ),
    Rule(
        "URL token",
        re.compile(r"(?i)(?P<scheme>(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}://)[\w.~+=-]{20,}@"),
        rf"\g<scheme>{REDACTED}@",
    ),
    # 3. headers: to the closing quote when the value is quoted, else to the end of the line
    Rule("header", _HEADER, _header),
    # 4. command lines
    Rule("mysql -p", _tool_flag(r"mysql\w*|mariadb[\w-]*", "-p(?=\\S)"), _value_only),
    Rule("sshpass -p", _tool_flag(r"sshpass", "-p"), _value_only),
    Rule("redis-cli -a", _tool_flag(r"redis-cli", "-a"), _value_only),
    Rule("mongo -p", _tool_flag(r"mongo(?:sh|dump|restore|export|import)?", "-p"), _value_only),
    Rule("ldap -w", _tool_flag(r"ldap\w+", "-w"), _value_only),
    Rule(
        "user:password option",
        re.compile(
            r"(?<![\w-])(?:-u|-U|--user|--proxy-user|--auth)(?:\s*=?\s*)"
            r"(?:\"(?P<qu>[^\":]*):(?P<qpw>[^\"]+)\"|'(?P<su>[^':]*):(?P<spw>[^']+)'"
            r"|(?P<user>[^\s:\"'%]+):(?P<pw>(?!\[REDACTED)[^\s\"']+))"
        ),
        lambda m: _user_password(m) if m["user"] is not None else _quoted_user_password(m),
    ),
    Rule(
        "smbclient -U",
        re.compile(r"(?<![\w-])-U\s*(?P<user>[^\s%]+)%(?P<value>(?!\[REDACTED)\S+)"),
        _value_only,
    ),
    Rule(
        "keytool -storepass",
        re.compile(
            r"(?<![\w-])-(?:store|key|src|dest|srcstore|deststore|srckey|destkey|new)pass\s+"
            + _VALUE
        ),
        _value_only,
    ),
    Rule("openssl pass:", re.compile(r"(?<![\w-])pass:(?=\S)" + _VALUE), _value_only),
    Rule(
        "htpasswd -b",
        re.compile(r"\bhtpasswd(?:\s+-\w+)*\s+-\w*b\w*(?:\s+-\w+)*\s+\S+\s+\S+\s+" + _VALUE),
        _value_only,
    ),
    Rule(
        "chpasswd",
        re.compile(
            r"(?<![\w.-])(?P<user>[\w.-]+):(?P<value>[^\s\"':|]+)[\"']?\s*\|\s*(?:sudo\s+)?chpasswd\b"
        ),
        _value_only,
    ),
    Rule(
        "credential option",
        re.compile(
            r"(?i)(?<![\w-])--?(?:[a-z0-9]+[-_.])*(?:"
            + _CLI_KEYWORDS
            + r")(?![\w-])\s+(?!-)"
            + _VALUE
        ),
        _value_only,
    ),
    # 5. token formats
    Rule("webhook URL", _WEBHOOKS, rf"\g<host>{REDACTED}"),
    *(_token_rule(name, pattern) for name, pattern in _TOKENS),
    # 6. keys and values
    Rule("secret key=value", _KEY_VALUE, _key_value),
    Rule("password is", _SAID_IS, _key_value),
    Rule("password said", _SAID_STRONG, rf"\g<key>\g<sep>{REDACTED}"),
    # 7. a credential after its scheme, standing alone (not "basic authentication")
    Rule(
        "bearer credential",
        re.compile(
            r"(?<![\w-])(?P<scheme>[Bb]earer|[Bb]asic|[Tt]oken)\s+(?!\[REDACTED)(?![a-z]+\b)"
            r"[\w.~+/=-]{8,}"
        ),
        rf"\g<scheme> {REDACTED}",
    ),
    Rule("bare 40-hex", _HEX40, _hex40),
)
