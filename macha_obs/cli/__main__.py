"""`python -m macha_obs.cli ...` is `macha-obs ...`."""

from macha_obs.cli import main

main()
