"""The webhook's token file (DESIGN.md invariant 13) and `macha-obs webhook-token`."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from macha_obs.cli import main
from macha_obs.config import Config
from macha_obs.intake.token import (
    WebhookTokenError,
    ensure_token,
    intake_token,
    is_loopback,
    load_token,
    read_token,
    token_path,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_invariant_13_token_created_0600_and_strong(tmp_path: Path) -> None:
    old = os.umask(0)  # a careless umask must not widen it
    try:
        path = ensure_token(tmp_path / "state")
    finally:
        os.umask(old)
    assert path == tmp_path / "state" / "webhook.token"
    assert mode(path) == 0o600
    token = load_token(path)
    assert len(token) >= 43  # token_urlsafe(32): 256 bits
    assert path.read_text() == token + "\n"
    # nothing else was left behind (the temporary name is linked, then removed)
    assert sorted(p.name for p in path.parent.iterdir()) == ["webhook.token"]


def test_reused_across_starts(tmp_path: Path) -> None:
    first = load_token(ensure_token(tmp_path))
    assert load_token(ensure_token(tmp_path)) == first
    other = load_token(ensure_token(tmp_path / "elsewhere"))
    assert other != first


def test_concurrent_creators_agree_on_one_token(tmp_path: Path) -> None:
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        tokens.append(load_token(ensure_token(tmp_path)))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 8
    assert len(set(tokens)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhook.token"]


def test_invariant_13_symlink_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("attacker-chosen\n")
    target.chmod(0o600)
    token_path(tmp_path).symlink_to(target)
    with pytest.raises(WebhookTokenError, match="symlink"):
        ensure_token(tmp_path)
    assert target.read_text() == "attacker-chosen\n"


def test_a_dangling_symlink_is_refused_and_nothing_is_written_through_it(
    tmp_path: Path,
) -> None:
    target = tmp_path / "would-be-created"
    token_path(tmp_path).symlink_to(target)
    with pytest.raises(WebhookTokenError, match="symlink"):
        ensure_token(tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o660, 0o644, 0o610])
def test_invariant_13_group_or_world_access_refused(tmp_path: Path, bits: int) -> None:
    path = ensure_token(tmp_path)
    before = path.read_text()
    path.chmod(bits)
    with pytest.raises(WebhookTokenError, match=f"chmod 600 {path}"):
        ensure_token(tmp_path)
    assert path.read_text() == before  # refused, not silently replaced or fixed


def test_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(token_path(tmp_path), 0o600)  # would block an open without O_NONBLOCK
    with pytest.raises(WebhookTokenError, match="not a regular file"):
        ensure_token(tmp_path)
    token_path(tmp_path).unlink()
    token_path(tmp_path).mkdir(mode=0o700)
    with pytest.raises(WebhookTokenError, match="not a regular file"):
        ensure_token(tmp_path)


@pytest.mark.parametrize("content", ["", "\n", "two words\n", "\xe9t\xe9\n"])
def test_a_file_without_a_token_is_refused(tmp_path: Path, content: str) -> None:
    path = token_path(tmp_path)
    path.write_text(content, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(WebhookTokenError, match="does not hold a token"):
        ensure_token(tmp_path)


def test_read_token_takes_one_word(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(" abc \n")
    assert read_token(tmp_path / "t") == "abc"
    (tmp_path / "e").write_text("\n")
    with pytest.raises(ValueError, match="one non-empty word"):
        read_token(tmp_path / "e")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("host.example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_intake_token_by_config(make_config: Callable[..., Config], tmp_path: Path) -> None:
    default = make_config()
    assert intake_token(default) == load_token(token_path(default.state_dir))
    own = tmp_path / "own.token"
    own.write_text("operator-token\n")
    assert intake_token(make_config(webhook_token_file=str(own))) == "operator-token"
    assert intake_token(make_config(webhook_auth=False)) is None
    for wide in ("0.0.0.0:9847", "[::]:9847", "192.168.1.10:9847"):
        with pytest.raises(WebhookTokenError, match="beyond loopback"):
            intake_token(make_config(webhook_auth=False, listen_address=wide, state_dir="/x"))
    # beyond loopback with authentication on: fine, a token is generated
    assert intake_token(make_config(listen_address="0.0.0.0:9847"))


# ---------------------------------------------------------------- macha-obs webhook-token


def cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    environ = {"MACHA_STATE_DIR": str(tmp_path / "state"), "MACHA_CONFIG": "", **env}
    result = CliRunner().invoke(main, ["webhook-token", *args], env=environ)
    return result.exit_code, result.stdout, result.stderr


def test_cli_prints_the_path_never_the_token(tmp_path: Path) -> None:
    code, out, err = cli(tmp_path)
    assert code == 1
    assert "no token yet" in err
    assert "--create" in err
    code, out, _ = cli(tmp_path, "--create")
    assert code == 0
    path = tmp_path / "state" / "webhook.token"
    assert out == f"{path}\n"
    assert mode(path) == 0o600
    token = load_token(path)
    code, again, _ = cli(tmp_path)
    assert (code, again) == (0, out)
    assert token not in out + again
    assert load_token(path) == token  # --create again reuses it
    assert cli(tmp_path, "--create")[:2] == (0, out)
    assert load_token(path) == token


def test_cli_reports_an_unsafe_file(tmp_path: Path) -> None:
    path = ensure_token(tmp_path / "state")
    path.chmod(0o644)
    code, out, err = cli(tmp_path)
    assert code == 1
    assert out == ""
    assert f"chmod 600 {path}" in err


def test_cli_with_a_configured_token_file(tmp_path: Path) -> None:
    own = tmp_path / "own.token"
    code, _, err = cli(tmp_path, MACHA_WEBHOOK_TOKEN_FILE=str(own))
    assert code == 1
    assert "missing" in err
    own.write_text("t\n")
    assert cli(tmp_path, MACHA_WEBHOOK_TOKEN_FILE=str(own))[:2] == (0, f"{own}\n")
    assert not (tmp_path / "state" / "webhook.token").exists()


def test_cli_when_authentication_is_off(tmp_path: Path) -> None:
    code, out, err = cli(tmp_path, "--create", MACHA_WEBHOOK_AUTH="false")
    assert (code, out) == (1, "")
    assert "webhook_auth = false" in err
    assert not (tmp_path / "state" / "webhook.token").exists()
