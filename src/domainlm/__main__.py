"""`python -m domainlm ...`, the `domainlm` command; what `accelerate launch -m domainlm ...` runs."""

from domainlm.cli import main

main()
