"""What every ``fit-*`` command line shares: one command class, one group class, how errors end, choice types.

Every user mistake and every click usage error prints exactly one line ``PROG: error: MESSAGE`` on stderr and
exits 2 (PROG is the program, also for a subcommand: ``fit-export: error: ...``); a warning prints one line
``PROG: warning: ...``; Ctrl-C prints one line ``PROG: interrupted`` (or a command's own hint) and exits 130;
``-h`` is ``--help`` everywhere. A command that needs an optional dependency names its extra (``extra="train"``):
a third-party module missing at run time is one line ``PROG: error: torch is not installed; pip install
'fit-toolkit[train]'``.

    @click.command(cls=Command, prog="fit-eval", extra="train")    # or: @click.group(cls=Group, prog="fit-export")
    def main(...):
        with user_errors(ValueError, OSError):          # these exception types are the user's mistakes
            ...
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import click

from engines.backends import backend_names, resolve_backend_name
from engines.errors import BackendError

HELP_OPTIONS = ("-h", "--help")
ERROR_EXIT = 2
INTERRUPT_EXIT = 130
TERMINATED_EXIT = 143                               # 128 + SIGTERM, as a shell reports a process it terminated


class UserError(click.ClickException):
    """A mistake the user can fix; the message is one line."""

    exit_code = ERROR_EXIT


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM, with ``exit_code`` TERMINATED_EXIT); the message is what the user reads after ``PROG:``
    (default ``interrupted``)."""

    def __init__(self, message: str = "interrupted", exit_code: int = INTERRUPT_EXIT):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty); an OSError names its file."""
    text = (err.format_message() if isinstance(err, click.ClickException) else str(err)).strip()
    message = text.splitlines()[0].strip() if text else type(err).__name__
    filename = getattr(err, "filename", None)
    if isinstance(err, OSError) and filename and str(filename) not in message:
        message = f"{filename}: {message}"
    return message


def flag_of(parameter: str) -> Optional[str]:
    """The long flag (``--cfg``) of the running command's option whose parameter name is ``parameter``."""
    ctx = click.get_current_context(silent=True)
    for option in (ctx.command.params if ctx is not None else ()):
        if isinstance(option, click.Option) and option.name == parameter:
            return next((o for o in option.opts if o.startswith("--")), option.opts[0])
    return None


@contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Inside the block, an exception of one of ``types`` is a user error: ``PROG: error: <its first line>``.

    An error that names the API parameter at fault (a ``parameter`` attribute, e.g. GenerationError's ``cfg``)
    and whose message starts with that name reads with the command's flag instead: ``cfg must ...`` in the API
    is ``--cfg must ...`` on the command line; one wording, one check. Other parameters the message names
    (``mentions``, each as ``NAME VALUE``) read as flags too, and a ``hint`` (an option that would make the request
    valid) is added as ``(or pass --FLAG)`` when the command has that option.
    """
    try:
        yield
    except types as err:
        raise UserError(render(err)) from err


def render(err: BaseException) -> str:
    """The one-line message of a user error, with API parameter names as the running command's flags."""
    message = one_line(err)
    parameter = getattr(err, "parameter", None)
    flag = flag_of(parameter) if parameter else None
    if flag and message.startswith(f"{parameter} "):
        message = flag + message[len(parameter):]
    for name in getattr(err, "mentions", ()):
        flag = flag_of(name)
        if flag:
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?= )", flag, message, count=1)
    hint = getattr(err, "hint", None)
    flag = flag_of(hint) if hint else None
    if flag:
        message += f" (or pass {flag})"
    return message


# fit-toolkit's own top-level packages: one of them missing is a broken install, not a missing extra
OWN_PACKAGES = frozenset({"cli", "engines", "fit", "fit_export", "fit_serve"})


@contextmanager
def needs_extra(extra: str) -> Iterator[None]:
    """Inside the block, a third-party module that is not installed is a user error naming the extra of
    fit-toolkit that installs it: ``torch is not installed; pip install 'fit-toolkit[train]'``."""
    try:
        yield
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if not missing or missing in OWN_PACKAGES:
            raise
        raise UserError(f"{missing} is not installed; pip install 'fit-toolkit[{extra}]'") from None


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())    # click >= 8.2


class _Conventions:
    """Shared by :class:`Command` and :class:`Group` (mixed in before the click class)."""

    def __init__(self, *args, prog: str | None = None, extra: str | None = None, **attrs):
        settings = dict(attrs.pop("context_settings", None) or {})
        settings.setdefault("help_option_names", list(HELP_OPTIONS))
        super().__init__(*args, context_settings=settings, **attrs)
        self.own_prog = prog
        self.extra = extra

    @property
    def prog(self) -> str:
        """The program name errors start with: the entry point (``fit-export``), also for its subcommands."""
        return self.own_prog or self.name

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """Warnings read like every other message: one line ``PROG: warning: MESSAGE`` (no source line)."""
        click.echo(f"{self.prog}: warning: {one_line(message) if isinstance(message, BaseException) else message}",
                   err=True)

    def invoke(self, ctx: click.Context):
        try:
            with needs_extra(self.extra) if self.extra else nullcontext():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = self._show_warning
                result = super().main(args, self.prog, complete_var, standalone_mode=False, **extra)
        except Interrupted as err:
            click.echo(f"{self.prog}: {err}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:                             # Ctrl-C while click itself was running
            click.echo(f"{self.prog}: interrupted", err=True)
            sys.exit(INTERRUPT_EXIT)
        except _NO_ARGS_HELP as err:                    # a group run without a command: its help
            err.show()
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"{self.prog}: error: {one_line(err)}", err=True)
            sys.exit(ERROR_EXIT)
        sys.exit(result if isinstance(result, int) else 0)


class Command(_Conventions, click.Command):
    """A click command with the conventions of this module. ``prog``: the program name for error lines; ``extra``:
    the fit-toolkit extra the command needs (pyproject.toml), named when one of its modules is missing."""


class Group(_Conventions, click.Group):
    """A click group with the conventions of this module; its subcommands are :class:`Command` and report
    errors under the group's program name (``extra``: the one every subcommand needs)."""

    command_class = Command

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if isinstance(cmd, _Conventions) and cmd.own_prog is None:
            cmd.own_prog = self.prog
        super().add_command(cmd, name)



class Named(click.ParamType):
    """One of a fixed set of canonical names (the only ones ``--help`` shows); ``resolve`` maps any accepted
    spelling (aliases, other case) to its canonical name or raises ValueError with a one-line message."""

    name = "name"

    def __init__(self, names: Sequence[str], resolve: Callable[[str], str],
                 errors: tuple[type[Exception], ...] = (ValueError,)):
        self.names, self.resolve, self.errors = tuple(names), resolve, errors

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.names) + "]"

    def convert(self, value, param, ctx):
        try:
            return self.resolve(value)
        except self.errors as err:
            self.fail(one_line(err), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.names if n.startswith(incomplete.lower())]


class Passed(click.ParamType):
    """A request value handed to the engine as given: ``engines`` checks it (one check, one wording, the flag named
    by :func:`user_errors`). Text that reads as a number becomes one: an int where a whole number is meant
    (``name`` "int", a decimal number then a float), else a float; ``numeric`` False keeps the text as it is.
    ``choices`` only show in ``--help``."""

    def __init__(self, name: str = "value", choices: Sequence[str] = (), numeric: bool = True):
        self.name, self.choices, self.numeric = name, tuple(choices), numeric

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "]" if self.choices else self.name.upper()

    def convert(self, value, param, ctx):
        if not self.numeric or not isinstance(value, str):
            return value
        for kind in ((int, float) if self.name == "int" else (float,)):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.choices if n.startswith(incomplete.lower())]


def runtime_options(command: Callable) -> Callable:
    """``--backend``, ``--precision`` and ``--threads``: how a command that runs a package runs it (one wording for
    fit-run and fit-serve; engines.load takes all three for every backend)."""
    command = click.option("--threads", type=click.IntRange(min=0), default=0,
                           help="CPU threads (ONNX Runtime intra-op, OpenVINO inference, the VAE decoder; 0 = auto; "
                                "TensorRT ignores it).")(command)
    command = click.option("--precision", default=None,
                           help="Transformer variant: a name the package lists or a precision (fp32, int8, fp16; "
                                "OpenVINO also bf16, TensorRT fp16/bf16 engines). Default: the package's default "
                                "variant.")(command)
    return click.option("--backend", type=BACKEND, default="onnxruntime", show_default=True)(command)


# --backend: the registered backends (engines.backends); aliases such as ``ort``/``trt`` are accepted quietly.
BACKEND = Named(dict.fromkeys(resolve_backend_name(name) for name in backend_names()), resolve_backend_name,
                errors=(BackendError,))


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output file that cannot be written: missing folder, a folder in its place, no
    write permission."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist")
    if path.is_dir():
        raise UserError(f"output {path} is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {folder}: permission denied")
