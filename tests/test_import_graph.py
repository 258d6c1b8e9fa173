"""The import graph of official/, modeling/ and dataloaders/: no cycle, one-way layers.

Each module's source is parsed with `ast` (nothing is imported), every import
statement in it is resolved to a module of this repository, and

- a cycle fails the test, naming every module on it and the line of each
  import (a function-level import counts: deferring an import hides a cycle
  from Python's loader, not from a reader);
- `modeling/` importing `official`, `dataloaders` or `gin`, or `dataloaders/`
  importing `official`, fails the test naming the file and line (the networks
  are plain Keras, configured from outside; the input pipelines use only the
  box and anchor ops of modeling/ops).

Resolution: `import a.b.c` and `from a.b import c` depend on a.b.c when it is a
module of the repository (else on the longest prefix that is); relative
imports resolve against the importing module's package. The packages Python
initialises before a submodule are not edges: a package's `__init__.py` may
import its own modules so that they register themselves (as
modeling/backbones/__init__.py does), and a module that imports one sibling
does not use the others.
"""

import ast
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("official", "modeling", "dataloaders")

# (importer package, forbidden top-level name): the layering of the packages.
FORBIDDEN = (
    ("modeling", "official"),
    ("modeling", "dataloaders"),
    ("modeling", "gin"),
    ("dataloaders", "official"),
)


def find_modules(root, packages):
  """dict module name -> (path, is_package) for every .py file of `packages`."""
  modules = {}
  for package in packages:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      parts = os.path.relpath(dirpath, root).split(os.sep)
      for filename in sorted(filenames):
        if not filename.endswith(".py"):
          continue
        path = os.path.join(dirpath, filename)
        if filename == "__init__.py":
          modules[".".join(parts)] = (path, True)
        else:
          modules[".".join(parts + [filename[:-3]])] = (path, False)
  return modules


def _longest_module(name, modules):
  """`name` or its longest dotted prefix that is a known module, else None."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    candidate = ".".join(parts[:end])
    if candidate in modules:
      return candidate
  return None


def imports_of(module, modules):
  """[(imported name as written, resolved module or None, line)] of `module`.

  The imported name is absolute (relative imports resolved); the resolved
  module is None for names outside the repository (gin, tensorflow, ...).
  """
  path, is_package = modules[module]
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  package = module if is_package else module.rpartition(".")[0]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        found.append((alias.name, _longest_module(alias.name, modules),
                      node.lineno))
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        if node.level > 1:
          base = base[:-(node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
      else:
        base = node.module
      for alias in node.names:
        full = f"{base}.{alias.name}"
        if alias.name != "*" and full in modules:
          found.append((full, full, node.lineno))
        else:
          found.append((base, _longest_module(base, modules), node.lineno))
    elif (isinstance(node, ast.Call) and node.args and
          isinstance(node.args[0], ast.Constant) and
          isinstance(node.args[0].value, str) and
          (getattr(node.func, "attr", None) == "import_module" or
           getattr(node.func, "id", None) in ("import_module", "__import__"))):
      # importlib.import_module("a.b") with a literal name is an import too.
      name = node.args[0].value
      found.append((name, _longest_module(name, modules), node.lineno))
  return found


def import_graph(modules):
  """dict module -> dict imported module -> first line of the import."""
  graph = {}
  for module in modules:
    edges = {}
    for _, target, line in imports_of(module, modules):
      if target is not None and target != module:
        edges.setdefault(target, line)
    graph[module] = edges
  return graph


def find_cycle(graph):
  """One cycle [m0, m1, ..., m0] of the graph, or None (iterative DFS)."""
  state = {}  # 1: on the current path, 2: finished.
  for start in sorted(graph):
    if state.get(start):
      continue
    path, stack = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      nxt = next(stack[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      elif not state.get(nxt):
        state[nxt] = 1
        path.append(nxt)
        stack.append(iter(sorted(graph.get(nxt, ()))))
  return None


def describe_cycle(cycle, graph, modules, root=REPO_ROOT):
  lines = [f"  {a} ({os.path.relpath(modules[a][0], root)} line "
           f"{graph[a][b]}) imports {b}" for a, b in zip(cycle, cycle[1:])]
  return "Import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(lines)


def layering_violations(modules, forbidden=FORBIDDEN, root=REPO_ROOT):
  """['path:line: importer imports name (forbidden ...)'] for every breach."""
  violations = []
  for module in sorted(modules):
    top = module.split(".")[0]
    for name, _, line in imports_of(module, modules):
      for importer, banned in forbidden:
        if top == importer and name.split(".")[0] == banned:
          violations.append(
              f"{os.path.relpath(modules[module][0], root)}:{line}: "
              f"{module} imports {name}, but {importer}/ must not import "
              f"{banned}")
  return violations


def test_repository_import_graph_has_no_cycle():
  modules = find_modules(REPO_ROOT, PACKAGES)
  # The walk must see the packages it guards (a wrong root finds nothing).
  assert {"official.registry", "official.tasks.retinanet",
          "modeling.backbones.spinenet",
          "dataloaders.retinanet_input"} <= set(modules)
  graph = import_graph(modules)
  cycle = find_cycle(graph)
  assert cycle is None, describe_cycle(cycle, graph, modules)


def test_repository_layering():
  violations = layering_violations(find_modules(REPO_ROOT, PACKAGES))
  assert not violations, "\n".join(violations)


def _write_tree(root, files):
  for relpath, text in files.items():
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
  # The shape this test exists for: a registry that imports the tasks, and a
  # task that imports the registry inside a method.
  _write_tree(str(tmp_path), {
      "official/__init__.py": "",
      "official/registry.py": "import gin\nfrom official.tasks import a\n",
      "official/tasks/__init__.py": "",
      "official/tasks/a.py": ("def build():\n"
                              "  from official import registry\n"
                              "  return registry\n"),
      "official/tasks/b.py": "from . import a\n",
  })
  modules = find_modules(str(tmp_path), ("official",))
  graph = import_graph(modules)
  assert graph["official.tasks.b"] == {"official.tasks.a": 1}
  cycle = find_cycle(graph)
  assert cycle in (["official.registry", "official.tasks.a",
                    "official.registry"],
                   ["official.tasks.a", "official.registry",
                    "official.tasks.a"])
  message = describe_cycle(cycle, graph, modules, root=str(tmp_path))
  assert (f"official.tasks.a ({os.path.join('official', 'tasks', 'a.py')} "
          "line 2) imports official.registry") in message
  # Without the back edge the same tree has no cycle.
  _write_tree(str(tmp_path), {"official/tasks/a.py": "import os\n"})
  assert find_cycle(import_graph(find_modules(str(tmp_path),
                                              ("official",)))) is None


def test_layering_breaches_are_named(tmp_path):
  _write_tree(str(tmp_path), {
      "modeling/__init__.py": "",
      "modeling/layers.py": "import gin\n\nfrom official.core import task\n",
      "dataloaders/__init__.py": "",
      "dataloaders/input.py": ("from modeling import layers\n"
                               "import official.registry\n"),
  })
  violations = layering_violations(
      find_modules(str(tmp_path), ("modeling", "dataloaders")),
      root=str(tmp_path))
  dataloaders_input = os.path.join("dataloaders", "input.py")
  modeling_layers = os.path.join("modeling", "layers.py")
  assert violations == [
      f"{dataloaders_input}:2: dataloaders.input imports official.registry, "
      "but dataloaders/ must not import official",
      f"{modeling_layers}:1: modeling.layers imports gin, but modeling/ must "
      "not import gin",
      f"{modeling_layers}:3: modeling.layers imports official.core, but "
      "modeling/ must not import official",
  ]


@pytest.mark.parametrize("source,expected", [
    ("from .. import ops\n", "pkg.ops"),
    ("from ..ops import boxes\n", "pkg.ops.boxes"),
    ("from .sibling import helper\n", "pkg.sub.sibling"),
    ("import importlib\nimportlib.import_module('pkg.ops.boxes')\n",
     "pkg.ops.boxes"),
])
def test_relative_and_dynamic_imports_resolve(tmp_path, source, expected):
  _write_tree(str(tmp_path), {
      "pkg/__init__.py": "",
      "pkg/ops/__init__.py": "",
      "pkg/ops/boxes.py": "",
      "pkg/sub/__init__.py": "",
      "pkg/sub/sibling.py": "helper = 1\n",
      "pkg/sub/user.py": source,
  })
  modules = find_modules(str(tmp_path), ("pkg",))
  assert expected in import_graph(modules)["pkg.sub.user"]
