"""`python -m cnetctl` and the `cnetctl` command."""

import sys


def main() -> None:
    # Ctrl-C while the modules load (about half a second) changes nothing: say so,
    # without a traceback from deep inside an import.
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("cnetctl: interrupted; nothing was changed\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
