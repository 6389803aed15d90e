"""`atas token` next to `atas dev`: the dev secret is found, bad keys and short secrets refused."""

from atas.cli.main import main
from atas.common.auth import verify_token


def test_without_jwt_secret_the_token_is_signed_with_atas_devs_secret(capsys, monkeypatch, tmp_path):
    secret = "dev-secret-" + "x" * 40
    (tmp_path / "jwt_secret").write_text(secret + "\n")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert main(["token", "-p", "web", "-s", "ingest:write", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    principal = verify_token(secret, out.out.strip())
    assert principal.projects == {"web"} and principal.scopes == {"ingest:write"}
    assert str(tmp_path / "jwt_secret") in out.err
    monkeypatch.setenv("ATAS_DATA_DIR", str(tmp_path))
    assert main(["token", "-p", "web"]) == 0
    assert verify_token(secret, capsys.readouterr().out.strip()).subject


def test_a_project_key_the_api_refuses_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("JWT_SECRET", "s" * 40)
    for key in ("bad project", "web\n", "-web", ""):
        assert main(["token", f"--project={key}"]) == 2
        assert "not a project key" in capsys.readouterr().err
    assert main(["token", "-p", "*"]) == 0


def test_a_short_secret_is_refused_not_warned_about(capsys, monkeypatch):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert main(["token", "-p", "web", "--secret", "short"]) == 2
    err = capsys.readouterr()
    assert "at least 32" in err.err and err.out == ""
