"""`diffurec` subcommands for the model layer (see diffurec/cli/__init__.py for the contract)."""


def register(subparsers) -> None:
    """Add this group's subcommands to the `diffurec` parser."""
