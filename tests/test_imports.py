"""numpyvit's import graph, read from the source (ast): no cycles, and no import of numpyvit's own
modules hidden inside a function (the usual way to dodge a cycle). Optional dependencies (CuPy,
mpi4py, Pillow, matplotlib) may be imported inside functions: numpyvit runs without them."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "numpyvit"


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module, node):
    """The numpyvit modules an Import / ImportFrom node names (a submodule if it is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "numpyvit"]
    if node.level:
        package = module.split(".")
        is_package = (PACKAGE.parent / Path(*package) / "__init__.py").exists()
        base = package if is_package else package[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == "numpyvit":
        target = node.module
    else:
        return []
    names = []
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        as_path = PACKAGE.parent / Path(*submodule.split("."))
        names.append(submodule if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists() else target)
    return names


def import_graph():
    """{module: {imported module}} for top-level imports, and [(module, line, target)] of imports
    of numpyvit modules inside functions."""
    graph, hidden = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        graph.setdefault(module, set())
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, node):
                    if id(node) in inside:
                        hidden.append((module, node.lineno, target))
                    elif target != module:
                        graph[module].add(target)
    return graph, hidden


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_numpyvit_has_no_import_cycles():
    graph, _ = import_graph()
    assert len(graph) > 40                                            # every module was read
    found = cycles(graph)
    print(f"\n{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycles")
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_numpyvit_import_hides_inside_a_function():
    _, hidden = import_graph()
    assert hidden == [], "imports inside functions: " + ", ".join(f"{m}:{line} -> {t}" for m, line, t in hidden)


def test_the_layers_and_the_textbook_stand_below_the_engine():
    """numpyvit.layers and numpyvit.reference import nothing of the model, the engine, the weights,
    the data or the training: only the low floor (backend, parallel, special, ...)."""
    graph, _ = import_graph()
    above = ("numpyvit.model", "numpyvit.engine", "numpyvit.weights", "numpyvit.data", "numpyvit.train",
             "numpyvit.io", "numpyvit.distributed", "numpyvit.presets", "numpyvit.viz")
    for module, targets in graph.items():
        if module.startswith(("numpyvit.layers", "numpyvit.reference")):
            assert not [t for t in targets if t.startswith(above)], f"{module} imports {sorted(targets)}"
