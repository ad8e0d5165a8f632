"""One-line errors for ``python -m monai.bundle run`` *before* a config is loaded.

MONAI reads the ``--config_file`` files before any ``monai_uda`` import in them can install
:func:`monai_uda.bundle.run.install_one_line_errors`, so a missing or malformed config file used to end in a
25 to 45-line traceback. The package installs ``monai_uda_bundle_errors.pth`` into site-packages; Python runs
its one line at start-up, which calls :func:`install` only when the interpreter was started as
``python -m monai.bundle ...`` (every other program is untouched and imports nothing). :func:`install`
installs the same hook early; a JSON error additionally names the config file that does not parse.
"""

from __future__ import annotations

import sys

__all__ = ["in_bundle_cli", "install", "handle", "json_error_file", "PTH_LINE"]

#: the line of ``monai_uda_bundle_errors.pth`` (site runs lines that start with "import"). It imports nothing else
#: at start-up (site may not have put every site-packages folder on the path yet, and other programs must not
#: pay for it): for ``python -m monai.bundle`` it installs a small hook that loads this module only when an
#: exception reaches the top.
PTH_LINE = (
    "import sys; exec(\"_monai_uda_argv = getattr(sys, 'orig_argv', [])\\n"
    "if ('-m', 'monai.bundle') in zip(_monai_uda_argv, _monai_uda_argv[1:]):\\n"
    " def _monai_uda_hook(t, v, b, _previous=sys.excepthook):\\n"
    "  try:\\n"
    "   from monai_uda.bundle.startup import handle\\n"
    "  except Exception:\\n"
    "   return _previous(t, v, b)\\n"
    "  return handle(t, v, b, _previous)\\n"
    " _monai_uda_hook._monai_uda = True\\n"
    " sys.excepthook = _monai_uda_hook\")\n"
)


def in_bundle_cli(argv: list[str] | None = None) -> bool:
    """Whether the interpreter runs ``python [options] -m monai.bundle`` (torchrun's workers: ``-u -m``); the
    test :data:`PTH_LINE` makes at start-up."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    return ("-m", "monai.bundle") in zip(argv, argv[1:])


def _config_files(argv: list[str]) -> list[str]:
    """The ``--config_file`` values of a ``monai.bundle run`` command line (a path or a list literal)."""
    import ast

    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--config_file=") else argv[i + 1] if a == "--config_file" and \
            i + 1 < len(argv) else None
        if value is None:
            continue
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        return [str(p) for p in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
    return []


def json_error_file(argv: list[str]) -> str | None:
    """The first ``--config_file`` that is not valid JSON, with the parser's message."""
    import json

    for path in _config_files(argv):
        if not path.endswith(".json"):
            continue
        try:
            with open(path) as f:
                json.load(f)
        except json.JSONDecodeError as e:
            return f"{path} is not valid JSON: {e}"
        except OSError:
            continue
    return None


def handle(etype, value, tb, previous) -> None:
    """Print a user error (missing file, bad key, a config file that is not JSON) as one line; anything else
    goes to ``previous`` (the traceback of a bug). ``MONAI_UDA_DEBUG=1`` keeps every traceback."""
    import json
    import os

    if os.environ.get("MONAI_UDA_DEBUG"):
        return previous(etype, value, tb)
    if isinstance(value, json.JSONDecodeError):
        where = json_error_file(list(getattr(sys, "orig_argv", sys.argv)))
        if where:
            print(f"monai.bundle run: error: {where} (MONAI_UDA_DEBUG=1 shows the traceback)", file=sys.stderr)
            return None
    from monai_uda.utils import error_message, user_error

    cause = user_error(value)
    if cause is None:
        return previous(etype, value, tb)
    print(f"monai.bundle run: error: {error_message(cause)} (MONAI_UDA_DEBUG=1 shows the traceback)",
          file=sys.stderr)
    return None


def install() -> None:
    """Install the one-line error hook now (``MONAI_UDA_DEBUG=1`` keeps tracebacks)."""
    import os

    if os.environ.get("MONAI_UDA_DEBUG") or getattr(sys.excepthook, "_monai_uda", False):
        return
    previous = sys.excepthook

    def hook(etype, value, tb):
        return handle(etype, value, tb, previous)

    hook._monai_uda = True  # type: ignore[attr-defined]
    sys.excepthook = hook
