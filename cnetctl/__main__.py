"""`python -m cnetctl` and the `cnetctl` command."""

import signal
import sys


def main() -> None:
    # Ctrl-C while the modules load changes nothing: say so,
    # without a traceback from deep inside an import.
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("cnetctl: interrupted; nothing was changed\n")
        sys.exit(130)
    try:
        cli_main()
    finally:
        # The run is over and its exit code decided. Python gives Ctrl-C and SIGTERM back their
        # default action while it shuts down: one arriving then would kill the process, and the
        # caller would see a death by signal instead of that exit code.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    main()
