# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""docs/architecture.md stays true: every ``plugins/module_utils/_*.py`` has a row in its table of files, and every
signature in a ``python contract`` block is the one in the code (resolved with ``inspect.signature``)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
MODULE_UTILS = REPO / "plugins" / "module_utils"
PACKAGE = "ansible_collections.directdownload.kvm.plugins.module_utils."
TABLE_HEADING = "## Files (`plugins/module_utils`)"
# The module_utils files, by module name (``_http``...).
MODULES = sorted(path.stem for path in MODULE_UTILS.glob("_*.py") if path.name != "__init__.py")

_ROW = re.compile(r"^\|\s*`(_\w+\.py)`\s*\|")
_BLOCK = re.compile(r"^```python contract\n(.*?)^```", re.S | re.M)
_LINE = re.compile(r"^(?P<module>_\w+)\.(?P<name>[\w.]+)\((?P<params>.*)\)\s*(->.*)?$")


def documented_files(text):
    """The ``_x.py`` names of the rows of the table under :data:`TABLE_HEADING`."""
    if TABLE_HEADING not in text:
        return None
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    return [match.group(1) for match in map(_ROW.match, section.splitlines()) if match]


def contract_lines(text):
    """``(line number, line)`` of every contract line (comments stripped)."""
    found = []
    for block in _BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            line = line.split("#", 1)[0].strip()
            if line:
                found.append((first + offset, line))
    return found


def resolve(module_name, qualname):
    """The object ``qualname`` of ``_module``, and whether it is a method reached through its class (``self``
    is not documented)."""
    obj = importlib.import_module(PACKAGE + module_name)
    parent = None
    for part in qualname.split("."):
        parent, obj = obj, getattr(obj, part)
    is_method = inspect.isclass(parent) and inspect.isfunction(inspect.getattr_static(parent, qualname.split(".")[-1]))
    return obj, is_method


def code_parameters(obj, is_method):
    params = list(inspect.signature(obj).parameters.values())
    if is_method:
        params = params[1:]
    return [param.replace(annotation=inspect.Parameter.empty) for param in params]


def documented_parameters(params_text, namespace):
    """The ``inspect.Parameter`` list of the documented text, defaults evaluated in the module ``namespace``."""
    tree = ast.parse("def f(%s): pass" % params_text).body[0].args
    positional = tree.posonlyargs + tree.args
    kind = inspect.Parameter
    result = []
    defaults = [None] * (len(positional) - len(tree.defaults)) + list(tree.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults)):
        param_kind = kind.POSITIONAL_ONLY if index < len(tree.posonlyargs) else kind.POSITIONAL_OR_KEYWORD
        result.append((arg.arg, param_kind, default))
    if tree.vararg:
        result.append((tree.vararg.arg, kind.VAR_POSITIONAL, None))
    for arg, default in zip(tree.kwonlyargs, tree.kw_defaults):
        result.append((arg.arg, kind.KEYWORD_ONLY, default))
    if tree.kwarg:
        result.append((tree.kwarg.arg, kind.VAR_KEYWORD, None))
    params = []
    for name, param_kind, default in result:
        value = inspect.Parameter.empty if default is None else eval(  # pylint: disable=eval-used
            compile(ast.Expression(default), "<docs/architecture.md>", "eval"), dict(vars(namespace)))
        params.append(inspect.Parameter(name, param_kind, default=value))
    return params


def render(module_name, qualname, params):
    """The contract line for ``params`` (defaults as their ``repr``: replace one by its constant's name if any)."""
    return "%s.%s%s" % (module_name, qualname, inspect.Signature(params))


def check_line(line):
    """None when ``line`` matches the code, else the message saying what to write instead."""
    match = _LINE.match(line)
    if not match:
        return "not of the form `_file.name(parameters)`: %r" % line
    module_name, qualname, params_text = match.group("module"), match.group("name"), match.group("params").strip()
    open_ended = params_text == "..." or params_text.endswith(", ...")
    if open_ended:
        params_text = params_text[:-3].rstrip().rstrip(",")
    try:
        obj, is_method = resolve(module_name, qualname)
    except (ImportError, AttributeError) as exc:
        return "%s.%s does not exist (%s): remove or rename this line" % (module_name, qualname, exc)
    actual = code_parameters(obj, is_method)
    namespace = importlib.import_module(PACKAGE + module_name)
    try:
        documented = documented_parameters(params_text, namespace)
    except Exception as exc:  # pylint: disable=broad-except
        return "cannot read the documented parameters of %r: %s" % (line, exc)
    compared = actual[:len(documented)] if open_ended else actual
    if _same(documented, compared):
        return None
    return ("%s.%s: documented (%s)%s, the code says %s; write:\n    %s" % (
        module_name, qualname, params_text, ", ..." if open_ended else "", inspect.Signature(actual),
        render(module_name, qualname, actual)))


def _same(documented, actual):
    if len(documented) != len(actual):
        return False
    for mine, theirs in zip(documented, actual):
        if (mine.name, mine.kind) != (theirs.name, theirs.kind):
            return False
        if (mine.default is inspect.Parameter.empty) != (theirs.default is inspect.Parameter.empty):
            return False
        if mine.default is not inspect.Parameter.empty and not (
                mine.default is theirs.default or mine.default == theirs.default):
            return False
    return True


# ---------------------------------------------------------------- the checks


def test_every_module_utils_file_has_a_row():
    text = DOC.read_text(encoding="utf-8")
    rows = documented_files(text)
    assert rows is not None, "docs/architecture.md has no %r section with the table of files" % TABLE_HEADING
    files = [module + ".py" for module in MODULES]
    missing = [name for name in files if name not in rows]
    hints = []
    for name in missing:
        doc = (importlib.import_module(PACKAGE + name[:-3]).__doc__ or "").strip().split("\n")[0]
        hints.append("| `%s` | %s |" % (name, doc or "<its one idea>"))
    assert not missing, ("docs/architecture.md: add a row to the table under %r for each file (its one idea):\n%s"
                         % (TABLE_HEADING, "\n".join(hints)))
    gone = [name for name in rows if name not in files]
    assert not gone, "docs/architecture.md: remove the rows of files that no longer exist: %s" % ", ".join(gone)
    duplicated = sorted({name for name in rows if rows.count(name) > 1})
    assert not duplicated, "docs/architecture.md: one row per file; twice: %s" % ", ".join(duplicated)


def test_documented_contracts_match_the_code():
    text = DOC.read_text(encoding="utf-8")
    lines = contract_lines(text)
    assert len(lines) >= 20, "the ```python contract blocks of docs/architecture.md were not found"
    problems = ["docs/architecture.md line %d: %s" % (number, problem)
                for number, problem in ((n, check_line(line)) for n, line in lines) if problem]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line, expected", [
    ("_fs.write_atomic(path, data, durable, mode=0o600, gid=None)", None),
    ("_fs.write_atomic(path, data, durable=False, mode=0o600, gid=None)",
     "write:\n    _fs.write_atomic(path, data, durable, mode=384, gid=None)"),
    ("_fs.write_atomic(path, data, durable, mode=0o644, gid=None)", "the code says"),
    ("_fs.write_atomic(path, data)", "the code says"),
    ("_fs.write_atomic(path, ...)", None),
    ("_fs.read_json(path, limit=16 * 1024 * 1024)", None),
    ("_fs.open_regular(path, flags=os.O_RDONLY, mode=0o600)", None),
    ("_fs.no_such_function(path)", "does not exist"),
    ("_registry.Registry.transaction()", None),
    ("_registry.Registry.transaction(self)", "the code says"),
    ("_errors.DirectDownloadError(msg, **details)", None),
    ("_errors.DirectDownloadError(msg, *details)", "the code says"),
    ("fsync_directory(path)", "not of the form"),
])
def test_the_check_can_fail(line, expected):
    problem = check_line(line)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem, problem


# Every module_utils file: its public functions, and the public methods of its public classes, carry type hints
# (they run on Python >= 3.9 hosts; with ``from __future__ import annotations`` the hints are strings, so typing
# names such as Optional are used, and every name in them must be importable at run time, not only when type
# checking: ``typing.get_type_hints`` resolves them here).


def public_callables(module):
    """``(qualified name, function, is_method)`` for the public functions of ``module`` and the public methods,
    class methods, static methods and properties of the public classes it defines."""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj, False
        elif inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_"):
                    continue
                bound = not isinstance(member, staticmethod)
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    yield "%s.%s" % (name, attr), member, bound


def missing_hints(module):
    """What lacks a hint: ``name(params) -> ?`` for each public callable of ``module`` with an unhinted parameter
    (``self``/``cls`` of a method excepted) or no return hint."""
    missing = []
    for name, function, bound in public_callables(module):
        hints = typing.get_type_hints(function)  # also proves every name in the hints resolves
        params = list(inspect.signature(function).parameters)
        if bound and params:
            params = params[1:]
        unhinted = [param for param in params if param not in hints]
        if unhinted or "return" not in hints:
            missing.append("%s(%s)%s" % (name, ", ".join(unhinted), "" if "return" in hints else " -> ?"))
    return missing


@pytest.mark.parametrize("module_name", MODULES)
def test_public_functions_have_type_hints(module_name):
    missing = missing_hints(importlib.import_module(PACKAGE + module_name))
    assert not missing, "%s: add type hints to: %s" % (module_name, "; ".join(missing))


def test_the_type_hint_check_can_fail():
    module = type(typing)("ansible_collections.directdownload.kvm.plugins.module_utils._example")
    exec(compile("""
from __future__ import annotations
def hinted(a: int, *, b: str = "") -> bool: ...
def bare(a, b: int): ...
class Thing:
    def method(self, x: int) -> None: ...
    def loose(self, x): ...
    @property
    def size(self) -> int: ...
    @property
    def name(self): ...
    @staticmethod
    def make(x) -> Thing: ...
    def _private(self, y): ...
""", "<example>", "exec"), module.__dict__)  # pylint: disable=exec-used
    assert missing_hints(module) == ["Thing.loose(x) -> ?", "Thing.make(x)", "Thing.name() -> ?", "bare(a) -> ?"]
