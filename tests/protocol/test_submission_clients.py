"""Real submission clients against a real server: swaks (--auth --tls), curl (--ssl-reqd on
smtp:// with STARTTLS and smtps:// to the implicit-TLS port) and msmtp; each message arrives
in the hosted recipient's Maildir with the trace of the authenticated sender."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.maildir import MaildirStore
from tests.conftest import in_ci
from tests.protocol.smtp_helpers import ADDRESSES, new_messages
from tests.protocol.submission_helpers import PASSWORD, SubmissionThread, message

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if in_ci():
            pytest.fail(f"{tool} is needed (make system-packages)")
        pytest.skip(f"{tool} is not installed")
    return path


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def _arrived(store: MaildirStore, subject: str) -> bytes:
    [copy] = [m for m in new_messages(store, OTHER) if f"Subject: {subject}".encode() in m]
    assert f"authenticated sender: {USER}".encode() in copy
    assert b"with ESMTPSA" in copy
    return copy


def test_swaks_auth_tls(
    submission: SubmissionThread, store: MaildirStore, tls_files: tuple[Path, Path]
) -> None:
    swaks = _need("swaks")
    argv = [swaks, "--server", f"127.0.0.1:{submission.port}", "--tls", "--auth", "PLAIN"]
    argv += ["--auth-user", USER, "--auth-password", PASSWORD, "--from", USER, "--to", OTHER]
    result = _run([*argv, "--header", "Subject: by swaks"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout
    _arrived(store, "by swaks")
    # The same without --tls: AUTH is not even offered before TLS, nothing is sent.
    plain = _run([*[a for a in argv if a != "--tls"], "--header", "Subject: plain"])
    assert plain.returncode != 0
    assert "250-AUTH" not in plain.stdout
    assert "did not advertise authentication" in plain.stderr, plain.stderr
    assert [m for m in new_messages(store, OTHER) if b"Subject: plain" in m] == []


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_curl_ssl_reqd(
    submission: SubmissionThread,
    store: MaildirStore,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    mode: str,
) -> None:
    curl = _need("curl")
    body = tmp_path / "mail.eml"
    body.write_bytes(message(USER, OTHER, subject=f"by curl {mode}"))
    url = (
        f"smtp://127.0.0.1:{submission.port}"
        if mode == "starttls"
        else f"smtps://127.0.0.1:{submission.tls_port}"
    )
    result = _run(
        [curl, "-sS", "--ssl-reqd", "--cacert", str(tls_files[0]), url, "--user",
         f"{USER}:{PASSWORD}", "--mail-from", USER, "--mail-rcpt", OTHER,
         "--upload-file", str(body)]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _arrived(store, f"by curl {mode}")


def test_msmtp(
    submission: SubmissionThread,
    store: MaildirStore,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    msmtp = _need("msmtp")
    config = tmp_path / "msmtprc"
    config.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {submission.port}\n"
        "tls on\n"
        "tls_starttls on\n"
        f"tls_trust_file {tls_files[0]}\n"
        "tls_host_override mx.test.example\n"
        "auth on\n"
        f"user {USER}\n"
        f"password {PASSWORD}\n"
        f"from {USER}\n"
    )
    config.chmod(0o600)
    result = _run(
        [msmtp, "-C", str(config), OTHER], input=message(USER, OTHER, "by msmtp").decode()
    )
    assert result.returncode == 0, result.stderr
    _arrived(store, "by msmtp")
