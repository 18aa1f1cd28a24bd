"""Intake: the webhook, the Alertmanager pull, the token, host matching, incidents."""
