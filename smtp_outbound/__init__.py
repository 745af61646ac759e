"""The delivery agent: takes queue rows, looks up MX hosts, sends with SMTP, retries, bounces."""
