"""Mailhost shared core: settings, database, models, Maildir store and services."""
