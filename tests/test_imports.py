"""The layering of aiida-mad: no import cycle, and the pure packages never import AiiDA.

The import graph is read from the source with ``ast`` (nothing is imported), over every module of the package:

* the **module-level** imports (those run when a module is imported; ``if TYPE_CHECKING:`` blocks excluded) must form
  a directed acyclic graph;
* **all** imports, those inside functions included, must form one too: an import moved into a function to break a
  cycle still makes one, it only hides it until run time;
* the **pure** modules (:data:`PURE`) import neither ``aiida`` nor an AiiDA plugin, and of aiida-mad only pure modules,
  at any level;
* every module imports only from its own layer or below (:data:`LAYERS`, described in ``docs/architecture.md``).
"""

from __future__ import annotations

import ast
import itertools
import pathlib

import pytest

import aiida_mad

PACKAGE_ROOT = pathlib.Path(aiida_mad.__file__).parent

#: Modules and packages that must not import AiiDA (a package stands for every module under it).
PURE = (
    'aiida_mad',  # the package's own __init__: the version only
    'aiida_mad.constants',
    'aiida_mad.dataset',
    'aiida_mad.dos',
    'aiida_mad.fingerprint',
    'aiida_mad.gpus',
    'aiida_mad.inference',
    'aiida_mad.learning',
    'aiida_mad.parallelization',
    'aiida_mad.scripts',
    'aiida_mad.structures',
    'aiida_mad.units',
)

#: The layer of each top-level module or package of aiida-mad: a module imports only from its layer or below.
LAYERS = {
    'aiida_mad': 0,
    'constants': 0,
    'dataset': 0,
    'dos': 0,
    'fingerprint': 0,
    'gpus': 0,
    'inference': 0,
    'learning': 0,
    'parallelization': 0,
    'scripts': 0,
    'structures': 0,
    'units': 0,
    'calculations': 1,
    'codes': 1,
    'data': 1,
    'parsers': 1,
    'pseudos': 1,
    'storage': 1,
    'controllers': 2,
    'workflows': 2,
    'demo': 3,
    'export': 3,
    'query': 3,
    'cli': 4,
}

#: Top-level packages that are AiiDA or its plugins.
AIIDA_PACKAGES = ('aiida', 'aiida_quantumespresso', 'aiida_pseudo', 'aiida_submission_controller', 'plumpy')


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


MODULES: dict[str, pathlib.Path] = {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob('*.py'))}


def is_package(name: str) -> bool:
    return MODULES[name].name == '__init__.py'


def is_pure(name: str) -> bool:
    return any(name == pure or (pure != 'aiida_mad' and name.startswith(f'{pure}.')) for pure in PURE)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
    )


class _Imports(ast.NodeVisitor):
    """Collect ``(target, line, module_level)`` for every import of one module."""

    def __init__(self, name: str):
        self.name = name
        self.package = name if is_package(name) else name.rpartition('.')[0]
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function  # noqa: N815

    def visit_If(self, node: ast.If):
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            base = self.package.split('.')
            base = base[: len(base) - (node.level - 1)]
            source = '.'.join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        for alias in node.names:
            # `from package import module` imports the module; `from module import name` the module only.
            target = f'{source}.{alias.name}'
            self.found.append((target if target in MODULES else source, node.lineno, self.depth == 0))


def imports_of(name: str) -> list[tuple[str, int, bool]]:
    visitor = _Imports(name)
    visitor.visit(ast.parse(MODULES[name].read_text(), filename=str(MODULES[name])))
    return visitor.found


IMPORTS = {name: imports_of(name) for name in MODULES}


def graph(*, module_level_only: bool) -> dict[str, set[str]]:
    """Return the import edges between the modules of aiida-mad."""
    return {
        name: {
            target
            for target, _, module_level in IMPORTS[name]
            if target in MODULES and target != name and (module_level or not module_level_only)
        }
        for name in MODULES
    }


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        members = set(component)
        # A shortest way back to the first module, inside the component, by breadth-first search.
        start = component[0]
        previous = {start: None}
        frontier = [start]
        closing = None
        while frontier and closing is None:
            following = []
            for node in frontier:
                for target in sorted(edges[node] & members):
                    if target == start:
                        closing = node
                        break
                    if target not in previous:
                        previous[target] = node
                        following.append(target)
                if closing is not None:
                    break
            frontier = following
        path = [closing]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def describe(cycle: list[str]) -> str:
    steps = []
    for source, target in itertools.pairwise(cycle):
        lines = sorted({line for name, line, _ in IMPORTS[source] if name == target})
        steps.append(f'{source} (line {", ".join(map(str, lines))}) -> {target}')
    return '\n  '.join(steps)


def test_the_walk_sees_the_whole_package():
    # Guards the tests below against an empty or partial walk.
    for name in ('aiida_mad.constants', 'aiida_mad.structures.registry', 'aiida_mad.workflows.generate'):
        assert name in MODULES
    assert len(MODULES) > 40


def test_module_level_imports_form_a_dag():
    cycles = find_cycles(graph(module_level_only=True))
    assert not cycles, 'import cycles at module level:\n  ' + '\n\n  '.join(map(describe, cycles))


def test_function_local_imports_hide_no_cycle():
    cycles = find_cycles(graph(module_level_only=False))
    assert not cycles, 'import cycles through function-local imports:\n  ' + '\n\n  '.join(map(describe, cycles))


@pytest.mark.parametrize('name', sorted(name for name in MODULES if is_pure(name)))
def test_pure_modules_import_no_aiida(name):
    problems = []
    for target, line, _ in IMPORTS[name]:
        top = target.partition('.')[0]
        if top in AIIDA_PACKAGES:
            problems.append(f'line {line}: imports {target}')
        elif top == 'aiida_mad' and target in MODULES and not is_pure(target):
            problems.append(f'line {line}: imports {target}, which is not pure')
    assert not problems, f'{name} must not import AiiDA:\n' + '\n'.join(problems)


def layer(name: str) -> int:
    top = name.split('.')[1] if '.' in name else 'aiida_mad'
    assert top in LAYERS, f'{name}: give `aiida_mad.{top}` a layer in LAYERS here and in docs/architecture.md'
    return LAYERS[top]


def test_imports_go_down_the_layers():
    upward = [
        f'{name} (layer {layer(name)}) imports {target} (layer {layer(target)}) at line {line}'
        for name in MODULES
        for target, line, _ in IMPORTS[name]
        if target in MODULES and layer(target) > layer(name)
    ]
    assert not upward, 'imports from a higher layer:\n' + '\n'.join(upward)


def test_the_cycle_finder_finds_cycles():
    edges = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert find_cycles(edges) == [['a', 'b', 'c', 'a']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []
