"""Secrets out of untrusted text before it reaches a model.

Replaced, in this order (a value already replaced is left alone by the later rules):

1. armored blocks whole, named by their type: PEM and OpenSSH keys, PGP blocks, RFC 4716
   and PuTTY keys, certificates too (their bodies tell a model nothing). A block spans
   several journal lines: `redact_lines` drops the body lines that follow a BEGIN line
   until the END line; a body line met alone is caught by the high-entropy rule;
2. credentials in URLs of any scheme (`redis://:pw@`, `postgres://u:pw@`, `https://TOKEN@`):
   the user name is kept;
3. header values: Authorization and Proxy-Authorization (the scheme is kept), Cookie and
   Set-Cookie;
4. command-line credentials: `--password X`, `--password=X`, `--token`, `--api-key` and
   their kin, `-pX` of the MySQL/MariaDB tools, `sshpass -p`, `redis-cli -a`, `mongo* -p`,
   `ldap* -w`, `curl -u user:pw`, `smbclient -U user%pw`, keytool's `-storepass`, OpenSSL's
   `pass:`, `htpasswd -b`, `… | chpasswd`;
5. well-known token formats, from their vendors' public documentation (GitHub, GitLab,
   Slack, AWS key ids, Google, Stripe, OpenAI, JWTs, npm, PyPI, Twilio, SendGrid, Hugging
   Face, Docker, Vault, age, Tailscale, …), named in the placeholder;
6. the value after a secret-sounding key (`password=`, `"api_key": "…"`, `PGPASSWORD=`,
   `-e MYSQL_ROOT_PASSWORD=…`, `X-Api-Key:`, `the password is …`); a quoted value whole,
   spaces and all;
7. a bearer or basic credential standing alone (`Bearer abc…`);
8. long high-entropy strings: 32 or more characters of the base64/base64url alphabet that
   mix upper and lower case, are not made of words or of plain pieces between - and _, and
   have at least 3.5 bits of Shannon entropy a character (random base64 of that length has
   4 or more); this catches all but about 1 in 5,000 random strings of 32 characters.

Kept on purpose, so that systemd's own messages stay readable: hex strings of any length
(machine, boot and invocation ids, UUIDs, digests, commit and container ids; a hex secret
with no key or known prefix in front of it is not caught), digests and fingerprints
labelled with their algorithm (`SHA256:…` of sshd, `sha256-…` of nix), file paths
(judged segment by segment), and strings made of words or plain pieces (unit names,
identifiers, device ids). Random mixed-case ids (an LVM UUID) are replaced like secrets.
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Replacement = str | Callable[[re.Match[str]], str]

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: Replacement


# ------------------------------------------------------------------ 1. armored blocks

_ARMOR_BEGIN = re.compile(r"-{4,5} ?BEGIN (?P<kind>[A-Z0-9][A-Z0-9 ]*?) ?-{4,5}")
_ARMOR_BLOCK = re.compile(
    r"-{4,5} ?BEGIN (?P<kind>[A-Z0-9][A-Z0-9 ]*?) ?-{4,5}"
    r".*?(?:-{4,5} ?END (?P=kind) ?-{4,5}|\Z)",
    re.S,
)
_PUTTY_BEGIN = re.compile(r"PuTTY-User-Key-File-\d+:")
_PUTTY_BLOCK = re.compile(r"PuTTY-User-Key-File-\d+:.*?(?:Private-MAC: *[0-9a-fA-F]*|\Z)", re.S)
_PUTTY_END = re.compile(r"Private-MAC:")

# A line inside a block, once its journal prefix is off: base64 (RFC 4716 continues a line
# with a backslash), a PGP checksum, an armor header, or blank.
_BODY_LINE = re.compile(
    r"[A-Za-z0-9+/]*={0,3}\\?|=[A-Za-z0-9+/]{4}"
    r"|(?:Version|Comment|Hash|Charset|MessageID|Proc-Type|DEK-Info|Subject|Encryption"
    r"|Public-Lines|Private-Lines|Private-MAC|Private-Hash|Key-Derivation|Argon2-[A-Za-z]+)"
    r": .*"
)
# journalctl's prefixes (short, short-iso, short-precise, short-monotonic: time, host,
# identifier[pid]) and the indentation of a multi-line message's continuation lines
_JOURNAL_PREFIX = re.compile(
    r"(?:\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\[ *\d+\.\d+\])"
    r" +\S+ +[^\s:]+(?:\[\d+\])?: ?"
    r"|\s+"
)


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
    # 7. a credential after its scheme, standing alone (not "basic authentication")
    Rule(
        "bearer credential",
        re.compile(
            r"(?<![\w-])(?P<scheme>[Bb]earer|[Bb]asic|[Tt]oken)\s+(?!\[REDACTED)(?![a-z]+\b)"
            r"[\w.~+/=-]{8,}"
        ),
        rf"\g<scheme> {REDACTED}",
    ),
)


def _quoted_user_password(match: re.Match[str]) -> str:
    group = "qpw" if match.group("qpw") is not None else "spw"
    start, end = match.span(group)
    text, base = match.group(0), match.start()
    return text[: start - base] + REDACTED + text[end - base :]


# ------------------------------------------------------------------ 8. high entropy

_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}(?:={1,3})?(?![A-Za-z0-9+/_-])")
_DIGEST_LABEL = re.compile(r"(?i)(?:sha(?:1|224|256|384|512)|md5|blake2[bs]?|b3)[:-]$")
_DIGEST_PREFIX = re.compile(r"(?i)(?:sha(?:1|224|256|384|512)|md5|blake2[bs]?|b3)-")
_HEX = re.compile(r"[0-9a-fA-F-]+")
_WORD = re.compile(r"[A-Z]?[a-z]{2,}|[A-Z]{3,}(?![a-z])")
_VOWEL = re.compile(r"[aeiouyAEIOUY]")
_LOWER_WORD = re.compile(r"[a-z]{3,}")
_SEPARATORS = re.compile(r"[-_]")
# one case, or words and numbers (Samsung, RootCA, 500GB, Go)
_PLAIN_PIECE = re.compile(
    r"[a-z]*[0-9]*|[A-Z0-9]+|[A-Z][a-z]|(?:[A-Z]{2,}(?![a-z])|[A-Z]?[a-z]{2,}|[0-9]+)+"
)
MIN_LENGTH = 32
MIN_ENTROPY = 3.5  # bits a character; random base64 of 32+ characters has 4 or more


def shannon_entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def _wordiness(text: str) -> float:
    """The share of `text` in word-like pieces with a vowel (Start, systemd, EVO)."""
    return sum(len(w) for w in _WORD.findall(text) if _VOWEL.search(w)) / len(text)


def _structured(text: str) -> bool:
    """Four or more pieces between - and _, each of one case or made of words: a device id
    (ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X), not random base64url."""
    pieces = _SEPARATORS.split(text)
    return len(pieces) >= 4 and all(_PLAIN_PIECE.fullmatch(p) for p in pieces)


def looks_random(text: str) -> bool:
    """A secret-like string: long, mixed, high-entropy, and not hex, words or structure."""
    core = text.rstrip("=")
    if len(core) < MIN_LENGTH or _HEX.fullmatch(core):
        return False
    if not (any(c.isupper() for c in core) and any(c.islower() for c in core)):
        return False  # words, CONSTANTS, nix store hashes (lower case and digits)
    if _wordiness(core) >= 0.8 or _structured(core):
        return False  # an identifier (SystemdJournalFlushService) or a device id
    return shannon_entropy(core) >= MIN_ENTROPY


def _high_entropy(match: re.Match[str]) -> str:
    run = match.group(0)
    if _DIGEST_PREFIX.match(run) or _DIGEST_LABEL.search(
        match.string[max(0, match.start() - 8) : match.start()]
    ):
        return run  # a digest or fingerprint labelled with its algorithm
    segments = run.split("/")
    if run.startswith("/") or any(_LOWER_WORD.fullmatch(s) for s in segments):
        # a path: judge its segments one by one
        return "/".join(f"[REDACTED {len(s)} chars]" if looks_random(s) else s for s in segments)
    return f"[REDACTED {len(run)} chars]" if looks_random(run) else run


# ------------------------------------------------------------------ public


def redact(text: str) -> str:
    """`text` with every secret this module knows replaced by a placeholder."""
    for rule in RULES:
        text = rule.pattern.sub(rule.replacement, text)
    return _CANDIDATE.sub(_high_entropy, text)


def _message(line: str) -> str:
    prefix = _JOURNAL_PREFIX.match(line)
    return line[prefix.end() :] if prefix else line


def redact_lines(lines: Iterable[str]) -> list[str]:
    """The lines of one journal, redacted; the body and END lines of a key block that
    began on an earlier line are dropped (its BEGIN line says what was there)."""
    out: list[str] = []
    end: re.Pattern[str] | None = None  # the end marker of the open block
    for line in lines:
        if end is not None:
            closing = end.search(line)
            if closing is not None:
                end = None
                rest = line[closing.end() :].strip()
                if rest and not _BODY_LINE.fullmatch(rest):
                    out.append(redact(rest))
                continue
            if _BODY_LINE.fullmatch(_message(line).strip()):
                continue
            end = None  # not key material: the block was cut short; judge the line itself
        end = _opens_block(line)
        out.append(redact(line))
    return out


def _opens_block(line: str) -> re.Pattern[str] | None:
    """The END marker to wait for when `line` begins a block it does not finish."""
    begin = _ARMOR_BEGIN.search(line)
    if begin is not None:
        kind = re.escape(begin.group("kind"))
        end = re.compile(rf"-{{4,5}} ?END {kind} ?-{{4,5}}")
        return None if end.search(line, begin.end()) else end
    putty = _PUTTY_BEGIN.search(line)
    if putty is not None and not _PUTTY_END.search(line, putty.end()):
        return re.compile(r"Private-MAC:.*")
    return None
