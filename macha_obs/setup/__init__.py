"""Setup: alert rules, units and polkit rendered from one source; install and uninstall."""
