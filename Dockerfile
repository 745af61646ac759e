# One image for every Mailhost service (smtp, pop3, web, migrate); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the Maildir volume; the application code stays root-owned.
RUN groupadd --system --gid 10001 mailhost \
 && useradd --system --uid 10001 --gid mailhost --home-dir /var/lib/mailhost --create-home mailhost \
 && mkdir -p /var/lib/mailhost/mail \
 && chown -R mailhost:mailhost /var/lib/mailhost

WORKDIR /app
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY app ./app
COPY smtp_ingress ./smtp_ingress
COPY pop3_service ./pop3_service
COPY web ./web
COPY mailhost ./mailhost
COPY alembic ./alembic
COPY alembic.ini ./alembic.ini
# Editable on purpose: migrations are located next to the app package (alembic/, alembic.ini).
RUN pip install -e .

USER mailhost
# `docker run mailhost` alone works on SQLite in the user's home; compose sets PostgreSQL.
ENV MAILHOST_DATABASE_URL=sqlite:////var/lib/mailhost/mailhost.db \
    MAILHOST_MAILDIR_ROOT=/var/lib/mailhost/mail \
    MAILHOST_SMTP_HOST=0.0.0.0 \
    MAILHOST_POP3_HOST=0.0.0.0 \
    MAILHOST_WEB_HOST=0.0.0.0

EXPOSE 2525 1110 8000
CMD ["mailhost", "serve"]
