"""POP3 service: a sans-IO protocol session and its asyncio server adapter."""
