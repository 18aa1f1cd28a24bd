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
   Before a "…" that marks a cut, a mixed-case run with digits of 12 or more (what a
   truncation left of a secret) is replaced too; `cut` redacts before it shortens.

Kept on purpose, so that systemd's own messages stay readable: hex strings of any length
but 40 (machine, boot and invocation ids, UUIDs, digests, container ids), and a 40-hex
string named as a commit or digest just before it (`commit …`, `HEAD is now at …`, a
flake's `…/nixpkgs/…`); a bare 40-hex string is replaced (the size of a SHA-1 token or
key: issue 20 planted one). Also kept: digests and fingerprints labelled with their
algorithm (`SHA256:…` of sshd, `sha256-…` of nix), file paths (judged segment by
segment), and strings made of words or plain pieces (unit names, identifiers, device
ids). Random mixed-case ids (an LVM UUID) are replaced like secrets.
Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from macha_obs.agent.secret_patterns import ARMOR_BEGIN, PUTTY_BEGIN, PUTTY_END, RULES

# ------------------------------------------------------------------ 1. blocks over lines

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


# A run cut off by a truncation ("…" where the text was cut): what is left of a secret
# is shorter than the high-entropy rule's 32 characters, but still a secret's prefix.
_CUT_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{12,}(?=…)")
CUT = "…"


def _partial(run: str) -> bool:
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run)
    if len(run) < 12 or not mixed or not any(c.isdigit() for c in run):
        return False
    return not (_HEX.fullmatch(run) or _wordiness(run) >= 0.8 or _structured(run))


def _cut_partial(match: re.Match[str]) -> str:
    """A cut-off run that looks like the start of a secret: mixed case with digits, not
    hex, words or structure; a path is judged by its last segment, as `_high_entropy`
    judges paths."""
    run = match.group(0)
    segments = run.split("/")
    if run.startswith("/") or any(_LOWER_WORD.fullmatch(s) for s in segments):
        if _partial(segments[-1]):
            return "/".join([*segments[:-1], f"[REDACTED {len(segments[-1])} chars]"])
        return run
    return f"[REDACTED {len(run)} chars]" if _partial(run) else run


def redact(text: str) -> str:
    """`text` with every secret this module knows replaced by a placeholder."""
    for rule in RULES:
        text = rule.pattern.sub(rule.replacement, text)
    text = _CANDIDATE.sub(_high_entropy, text)
    return _CUT_RUN.sub(_cut_partial, text) if CUT in text else text


def cut(text: str, limit: int) -> str:
    """`text` redacted, then shortened to `limit` characters with "…" where it was cut:
    a secret is replaced whole before the cut, never left as a prefix too short to see."""
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + CUT


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
    begin = ARMOR_BEGIN.search(line)
    if begin is not None:
        kind = re.escape(begin.group("kind"))
        end = re.compile(rf"-{{4,5}} ?END {kind} ?-{{4,5}}")
        return None if end.search(line, begin.end()) else end
    putty = PUTTY_BEGIN.search(line)
    if putty is not None and not PUTTY_END.search(line, putty.end()):
        return re.compile(r"Private-MAC:.*")
    return None
