"""Typed actions against the host: systemd over D-Bus, nix and journal as argv lists."""
