"""Command-line plumbing shared by `train.py` and `evaluate.py`: bad flags and bad config values
end the program with one clear line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import re
import sys
from typing import Callable, NoReturn

from h2mt_jax.data.records import DataError
from h2mt_jax.errors import ConfigError


def fail(message: str) -> NoReturn:
    """Prints `error: message` to stderr and exits with status 2 (a usage error)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _config_flag_message(err: BaseException) -> str:
    """One line for an exception raised while parsing `--config...` flags."""
    text = str(err)
    if isinstance(err, (AttributeError, KeyError)):  # ml_collections: an unknown field
        field = re.search(r"([A-Za-z_]\w*)", text)
        hint = re.search(r'Did you mean \W*"([\w.]+)"', text)
        return (f"unknown config field {field.group(1) if field else text!r}"
                + (f"; did you mean {hint.group(1)!r}?" if hint else ""))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if isinstance(err, OSError) and lines:  # ml_collections: the config file does not load
        return f"cannot load the config file: {' '.join(lines[-2:])}"
    if "Error whilst parsing config file" in text and lines:
        # ml_collections wraps the config module's own exception: keep its last line
        return f"{lines[0].split(':')[0]}: {lines[-1]}"
    return lines[0] if lines else type(err).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """`absl.app.run(..., flags_parser=parse_flags)`: absl's parsing, with one-line errors."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS:
            flags.FLAGS.config.to_dict()  # ml_collections loads the file lazily: load it here
        return rest
    except (flags.Error, AttributeError, KeyError, ValueError, OSError) as err:
        fail(_config_flag_message(err))


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` where flag errors, `ConfigError` and `DataError` (a missing or bad data
    file) print one line and exit 2."""
    from absl import app

    def guarded(argv):
        try:
            return main(argv)
        except (ConfigError, DataError) as err:
            fail(str(err))

    app.run(guarded, flags_parser=parse_flags)
