"""The click group, shared option types, and the error policy: user errors exit 2 with one or
two lines on stderr, internal errors exit 1 with a hint, ``--debug`` shows tracebacks."""
from __future__ import annotations

import ast
import functools
import importlib
import math
import signal
import sys
import traceback
import warnings
from pathlib import Path

import click

from netsurgery.darknet.cfg import STRICT_DEFAULT, strict_reading
from netsurgery.errors import CfgWarning, NetsurgeryError


class SizeParam(click.ParamType):
    """``W,H`` (or a single number for a square input)."""

    name = "W,H"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = [int(v) for v in str(value).replace("x", ",").split(",")]
        except ValueError:
            self.fail(f"{value!r}: expected W,H such as 416,416", param, ctx)
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) <= 0:
            self.fail(f"{value!r}: expected two positive integers W,H", param, ctx)
        return tuple(parts)


class IntListParam(click.ParamType):
    """Comma-separated integers, e.g. ``40,48,64,73`` (``minimum``: smallest value allowed;
    ``allow_empty``: whether no number at all is a valid value)."""

    name = "N[,N...]"

    def __init__(self, minimum: int | None = None, allow_empty: bool = True):
        self.minimum = minimum
        self.allow_empty = allow_empty

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = [int(v) for v in str(value).split(",") if v.strip() != ""]
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated integers", param, ctx)
        if not values and not self.allow_empty:
            self.fail(f"{value!r}: expected at least one integer", param, ctx)
        if self.minimum is not None and any(v < self.minimum for v in values):
            self.fail(f"{value!r}: expected layer indices ≥ {self.minimum}", param, ctx)
        return values


class LayerIndexParam(click.ParamType):
    """A Darknet layer index (0-based, ``[net]`` not counted)."""

    name = "K"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        try:
            index = int(str(value).strip())
        except ValueError:
            index = None
        if index is None or index < 0:
            self.fail(f"{value!r}: expected a layer index ≥ 0 (Darknet's numbering)", param,
                      ctx)
        return index


class BoundedFloatParam(click.ParamType):
    """A finite number in [low, high] (NaN and infinities refused)."""

    name = "X"

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and self.low <= number <= self.high):
            self.fail(f"{value!r}: expected a number from {self.low:g} to {self.high:g}", param,
                      ctx)
        return number


class DeviceParam(click.ParamType):
    """A torch device this build can use: ``cpu``, or ``cuda``/``cuda:N`` where CUDA is."""

    name = "DEVICE"

    def convert(self, value, param, ctx):
        import torch

        try:
            device = torch.device(str(value))
        except (RuntimeError, ValueError):
            self.fail(f"{value!r}: expected cpu, cuda or cuda:N", param, ctx)
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                self.fail(f"{value!r}: this torch build has no usable CUDA device; use cpu",
                          param, ctx)
            if device.index is not None and device.index >= count:
                self.fail(f"{value!r}: there are {count} CUDA devices", param, ctx)
        elif device.type != "cpu":
            self.fail(f"{value!r}: expected cpu, cuda or cuda:N", param, ctx)
        return str(value)


SIZE = SizeParam()
INT_LIST = IntListParam()
K_LIST = IntListParam(minimum=0, allow_empty=False)
LAYER_INDEX = LayerIndexParam()
FRACTION = BoundedFloatParam(0.0, 1.0)
POSITIVE = click.IntRange(min=1)
DEVICE = DeviceParam()


def _set_strict(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value or param.name == "strict_all":  # the group's flag sets it for the whole run
        strict_reading(value)
    return value


STRICT_HELP = ("Refuse what Darknet accepts with a warning in a cfg (a key it does not read, "
               "surplus or missing anchors, a duplicate key) instead of warning.")

strict_option = click.option("--strict", is_flag=True, expose_value=False, callback=_set_strict,
                             is_eager=True, help=STRICT_HELP)


class LazyGroup(click.Group):
    """Commands defined one module each (or a few) in this package, imported only when one of
    their commands runs: ``netsurgery info`` does not load what ``detect`` needs (torch).
    ``--help`` reads the command summaries from the modules' source, importing none."""

    _summaries_only = False

    @functools.cached_property
    def catalogue(self) -> dict[str, tuple[str, click.Command]]:
        """Command name → (module, a stand-in command holding its help), from the
        ``@main.command`` decorators in this package's modules."""
        found: dict[str, tuple[str, click.Command]] = {}
        for path in sorted(Path(__file__).parent.glob("*.py")):
            if path.stem in ("__init__", "app"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    for deco in node.decorator_list:
                        command = _declared_command(deco, node)
                        if command is not None:
                            found[command.name] = (f"{__package__}.{path.stem}", command)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.catalogue))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        if self._summaries_only:
            entry = self.catalogue.get(name)
            return None if entry is None else entry[1]
        # the usual home, cli/<name>.py, is imported without reading every module's source
        stem = name.replace("-", "_")
        if stem.isidentifier() and stem not in ("app", "__init__") and \
                Path(__file__).with_name(f"{stem}.py").is_file():
            importlib.import_module(f"{__package__}.{stem}")  # its decorators register it
            command = super().get_command(ctx, name)
        if command is None and name in self.catalogue:
            importlib.import_module(self.catalogue[name][0])
            command = super().get_command(ctx, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._summaries_only = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._summaries_only = False


def _declared_command(deco: ast.expr, func: ast.FunctionDef) -> click.Command | None:
    """The command a ``@main.command(...)`` decorator declares (name and help only)."""
    if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
            and deco.func.attr == "command" and isinstance(deco.func.value, ast.Name)
            and deco.func.value.id == "main"):
        return None
    keywords = {k.arg: k.value.value for k in deco.keywords if isinstance(k.value, ast.Constant)}
    name = deco.args[0].value if deco.args and isinstance(deco.args[0], ast.Constant) else \
        keywords.get("name", func.name.lower().replace("_", "-"))
    return click.Command(name, help=ast.get_docstring(func), short_help=keywords.get("short_help"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--strict", "strict_all", is_flag=True, expose_value=False, callback=_set_strict,
              is_eager=True, help=STRICT_HELP + " For every command.")
@click.version_option(package_name="netsurgery")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Surgery on trained Darknet (YOLO) networks: diff, share, merge, measure."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def run(argv: list[str] | None = None) -> int:
    """Entry point with the error policy applied. Returns the exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    _terminate_cleanly()
    token = STRICT_DEFAULT.set(False)  # --strict lasts one run (also for in-process calls)
    try:
        with warnings.catch_warnings():
            # numpy's "invalid value encountered" lines are noise to a user: the results
            # show NaN themselves, and refusals are errors of their own
            warnings.simplefilter("ignore", RuntimeWarning)
            _show_cfg_warnings()
            main.main(args=argv, prog_name="netsurgery", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        echo_err("netsurgery: interrupted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except NetsurgeryError as exc:
        if debug:
            traceback.print_exc()
        echo_err(f"netsurgery: error: {exc}")
        return 2
    except KeyboardInterrupt:
        echo_err("netsurgery: interrupted; no partial output was left")
        return 130
    except MemoryError:  # what check_fits could not foresee (a huge batch of images)
        echo_err("netsurgery: error: out of memory; use smaller inputs (--size, --batch)")
        return 2
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a folder we may not write, a full disk: the user's to fix
        if debug:
            traceback.print_exc()
        echo_err(f"netsurgery: error: {exc}")
        return 2
    except Exception:  # noqa: BLE001 - the last line of defence for internal errors
        if debug:
            traceback.print_exc()
        else:
            exc_type, exc, _ = sys.exc_info()
            echo_err(f"netsurgery: internal error: {exc_type.__name__}: {exc}")
            echo_err("This is a bug in netsurgery. Re-run with --debug and report the traceback.")
        return 1
    finally:
        STRICT_DEFAULT.reset(token)


def _show_cfg_warnings() -> None:
    """Inside ``catch_warnings``: each cfg warning once, as ``netsurgery: warning: ...``."""
    shown: set[str] = set()
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, CfgWarning):
            return default_show(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            echo_err(f"netsurgery: warning: {message}")

    warnings.simplefilter("always", CfgWarning)
    warnings.showwarning = show


def _terminate_cleanly() -> None:
    """SIGTERM behaves like Ctrl-C: the exception unwinds through atomic writers, which
    remove their temporary files, so a killed run leaves no partial output."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from a test runner thread)
        pass


def console_main() -> None:
    sys.exit(run())
