"""Every subcommand answers --help (users reach for it first)."""

import pytest

from atas.cli.main import build_parser, main


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_core_commands_exist():
    assert {"serve", "migrate", "token", "stack", "dev", "load"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: atas " + command)
    assert len(out.splitlines()) > 3


def test_token_command_mints_a_verifiable_token(capsys, monkeypatch):
    from atas.common.auth import verify_token

    secret = "cli-secret-" + "q" * 40
    monkeypatch.setenv("JWT_SECRET", secret)
    assert main(["token", "-p", "web", "-s", "query:read", "--ttl", "60"]) == 0
    principal = verify_token(secret, capsys.readouterr().out.strip())
    assert principal.projects == {"web"} and principal.scopes == {"query:read"}


def test_token_without_secret_says_what_to_do(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("ATAS_DATA_DIR", str(tmp_path))  # no atas dev secret there either
    assert main(["token", "-p", "web"]) == 2
    assert "JWT_SECRET" in capsys.readouterr().err
