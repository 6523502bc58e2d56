"""Subcommands of `tuneserve` kept out of cli.py: one module per group, each with ``add(sub)``.

A module here registers its subparsers (with ``set_defaults(handler=...)``) and imports the
stage or service modules it needs inside its handlers, as cli.py does; cli.build_parser calls
every module's ``add``.
"""
