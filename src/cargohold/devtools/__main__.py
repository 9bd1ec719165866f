"""``python -m cargohold.devtools``: the developers' CLI (its click commands live in
:mod:`cargohold.cli.devtools_main`, with every other command)."""

from cargohold.cli.devtools_main import run

run()
