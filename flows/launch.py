"""Entry point of the `impetus` console script: set up the process (flows/process.py: telemetry
off, OpenBLAS preloaded), then import and run the CLI.
"""

from __future__ import annotations


def main() -> None:
    from flows.process import prepare

    prepare()
    from flows.cli import app

    app(prog_name="impetus")


if __name__ == "__main__":
    main()
