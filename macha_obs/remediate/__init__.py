"""Remediation: facts once, judged once, then execute, queue or record; verify; learn."""
