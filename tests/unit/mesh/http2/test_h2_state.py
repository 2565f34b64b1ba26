"""``MeshH2Connection._receive_frame`` is h2's own, less one line: kept so as h2 changes."""

from __future__ import annotations

import ast
import inspect
import textwrap

from h2.connection import H2Connection

from mesh.http2.h2_state import MeshH2Connection


def body(function: object) -> list[ast.stmt]:
    """The function's statements, without its docstring."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    statements = definition.body
    if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements = statements[1:]
    return statements


def is_trace_log(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and "logger.trace" in ast.unparse(statement)


def test_receive_frame_is_h2s_without_the_trace_log() -> None:
    theirs = body(H2Connection._receive_frame)
    assert any(is_trace_log(statement) for statement in theirs), \
        "h2 no longer logs each frame: MeshH2Connection._receive_frame can go"
    expected = [ast.dump(statement) for statement in theirs if not is_trace_log(statement)]
    assert [ast.dump(statement) for statement in body(MeshH2Connection._receive_frame)] == \
        expected, "h2 changed H2Connection._receive_frame: bring MeshH2Connection's copy in line"
