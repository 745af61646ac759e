"""Project plumbing checked as far as this machine allows: compose file, Dockerfile, Makefile,
CI script, and the README and .env.example kept in step with Settings and the CLI."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from mailhost.cli import build_parser
from tests.conftest import in_ci

REPO = Path(__file__).resolve().parents[2]
EDGE_SERVICES = {"smtp": 2525, "pop3": 1110, "web": 8000, "submission": 2587}
# Services without a port of their own (the delivery agent works from the queue).
WORKER_SERVICES = {"delivery": ["mailhost", "deliver"]}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# ---------------------------------------------------------------------------- docker compose
def test_compose_has_postgres_migrate_and_one_container_per_service() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", *EDGE_SERVICES, *WORKER_SERVICES, "migrate"}
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])

    migrate = services["migrate"]
    assert _command(migrate)[:3] == ["mailhost", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"

    for name in EDGE_SERVICES:
        service = services[name]
        assert _command(service) == ["mailhost", name]
        assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert service["build"] == "."
        env = service["environment"]
        assert env["MAILHOST_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["MAILHOST_DATABASE_URL"]
        assert env[f"MAILHOST_{name.upper()}_HOST"] == "0.0.0.0"  # noqa: S104
        assert "healthcheck" in service, name
    for name, command in WORKER_SERVICES.items():
        service = services[name]
        assert _command(service) == command
        assert service["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert "@postgres:5432/" in service["environment"]["MAILHOST_DATABASE_URL"]


def test_compose_services_share_one_maildir_volume_at_the_configured_root() -> None:
    data = _compose()
    mounts = set()
    for name in [*EDGE_SERVICES, *WORKER_SERVICES, "migrate"]:
        service = data["services"][name]
        root = service["environment"]["MAILHOST_MAILDIR_ROOT"]
        (volume,) = [v for v in service["volumes"] if v.endswith(":" + root)]
        mounts.add(volume)
    assert len(mounts) == 1
    (mount,) = mounts
    assert mount.split(":")[0] in data["volumes"]


def test_compose_commands_are_valid_mailhost_command_lines() -> None:
    parser = build_parser()
    for name, service in _compose()["services"].items():
        if name == "postgres":
            continue
        argv = _command(service)
        assert argv[0] == "mailhost"
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown command or option


def test_compose_healthchecks_probe_the_right_ports() -> None:
    services = _compose()["services"]
    for name, port in EDGE_SERVICES.items():
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert str(port) in test[3]
        compile(test[3], f"{name} healthcheck", "exec")  # valid Python
        assert services[name]["environment"].get(f"MAILHOST_{name.upper()}_PORT") == str(port)
    assert "/healthz" in services["web"]["healthcheck"]["test"][3]


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or Debian's `docker-compose`; neither needs an engine."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_is_valid() -> None:
    compose = _compose_command()
    if compose is None:
        if in_ci():
            pytest.fail("CI must validate docker-compose.yml: `make test` installs docker-compose")
        pytest.skip("neither `docker compose` nor docker-compose here; the YAML checks above apply")
    result = subprocess.run(
        [*compose, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- Dockerfile
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_dockerfile_base_user_install_and_copied_files_exist() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "pip install" in runs
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    assert copies
    copied = set()
    for parts in copies:
        for source in parts[:-1]:
            assert not source.startswith("--"), "COPY flags are not expected here"
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
            assert not _dockerignored(source), f"{source} is excluded by .dockerignore"
            copied.add(source.rstrip("/"))
    # Everything the installed package and its migrations need is in the image.
    for needed in ("pyproject.toml", "README.md", "app", "smtp_ingress", "pop3_service", "web",
                   "mailhost", "alembic", "alembic.ini"):  # fmt: skip
        assert needed in copied, needed
    (cmd,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert cmd.startswith('["mailhost"')


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    for path in (".venv", "var", ".env", ".git"):
        assert _dockerignored(path), path


# ---------------------------------------------------------------------------- Makefile and CI
def test_makefile_targets_and_dry_run() -> None:
    text = (REPO / "Makefile").read_text()
    for target in ("run", "test", "lint", "pytest", "bench", "clean"):
        assert re.search(rf"^{target}:", text, re.M), target
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    dry = subprocess.run([make, "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    for tool in ("ruff check", "ruff format --check", "mypy", "lint-imports", "pytest"):
        assert tool in dry.stdout, tool
    run = subprocess.run([make, "-n", "run"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and "mailhost serve" in run.stdout


def test_ci_script_is_strict_bash_and_cleans_up_its_database() -> None:
    path = REPO / ".ci" / "run"
    assert path.stat().st_mode & stat.S_IXUSR
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert "export CI=true" in text
    assert "make test" in text
    assert "MAILHOST_TEST_DATABASE_URL=" in text
    assert re.search(r"trap \w+ EXIT", text) and "DROP DATABASE" in text
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


# ---------------------------------------------------------------------------- docs vs code
def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "this host's FQDN"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return str(value) if value.is_absolute() else f"./{value}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):  # JSON in the environment, as pydantic-settings reads it
        items = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
        return json.dumps(items, separators=(",", ":"))
    return str(value)


def test_readme_configuration_table_lists_every_setting_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(MAILHOST_[A-Z0-9_]+)` \| (.+?) \|", readme, re.M)
    }
    expected = {f"MAILHOST_{name.upper()}": _default_text(name) for name in Settings.model_fields}
    assert set(rows) == set(expected), set(rows) ^ set(expected)
    for env, default in expected.items():
        assert rows[env].strip("`") == default, env


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        env = f"MAILHOST_{name.upper()}"
        default = _default_text(name)
        if default in ("unset", "this host's FQDN"):
            assert re.search(rf"^# {env}=", text, re.M), env
        else:
            assert re.search(rf"^# {env}={re.escape(default)}$", text, re.M), env


def test_readme_cli_commands_parse() -> None:
    """Every `$ mailhost ...` line in the README is a valid command line."""
    parser = build_parser()
    lines = [
        line.removeprefix("$ ")
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("$ mailhost ")
    ]
    assert len(lines) >= 5
    for line in lines:
        parser.parse_args(shlex.split(line)[1:])


def test_readme_starts_with_purpose_then_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    assert text.startswith("# Mailhost\n")
    run_at, test_at = text.index("make run"), text.index("make test")
    assert run_at < test_at < text.index("## A five-minute tour")
    for word in ("swaks", "pop3://", "customer add", "domain add", "mailbox add"):
        assert word in text


def test_compose_gives_the_drain_time_before_sigkill() -> None:
    """Docker's default is 10 s; SMTP may need up to its 30 s stop grace to finish a DATA."""
    from smtp_ingress.server import DEFAULT_STOP_GRACE

    for name in EDGE_SERVICES:
        grace = _compose()["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > DEFAULT_STOP_GRACE, name
