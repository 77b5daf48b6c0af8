"""The rooms of the code and the direction of their imports (docs/architecture.md): no arrow points upward,
and no room imports a private name from another."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top: a module may import from its own room and the rooms below it.
ROOMS = [
    ("scratchnn", "the chapter's modules, the transformer's parts, hooks, the backend switch"),
    ("blocks.fast", "the speed backend, registered with scratchnn.backend"),
    ("blocks", "the transformer assembled from scratchnn, its cache, interop, weights on disk"),
    ("probes", "analysis as pure functions over models, caches and tensors"),
    ("blocks.tasks", "toy tasks and their evaluation (which may use the analysis library)"),
    ("blocks.training", "the trainer, its command line, run directories and checkpoints"),
    ("probes.scripts", "the probe scripts and the sandbox command"),
    ("views", "the Streamlit app: layout and widgets"),
]
ORDER = {name: i for i, (name, _) in enumerate(ROOMS)}


def room_of(module: str) -> str | None:
    """The most specific room whose name is the module or a prefix of it.

    `python -m` aliases are entry points and sit with what they run: blocks.train with training,
    a package's __main__ with the scripts.
    """
    if module == "app":
        return "views"
    if module == "blocks.train":
        return "blocks.training"
    if module.endswith(".__main__"):
        return "probes.scripts"
    matches = [name for name in ORDER if module == name or module.startswith(name + ".")]
    return max(matches, key=len) if matches else None


def modules() -> list[tuple[str, Path]]:
    found = [("app", ROOT / "app.py")]
    for package in ("scratchnn", "blocks", "probes", "views"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import of ours in the file.

    An `if __name__ == "__main__":` block is an entry point (`python -m probes.patching` runs the
    module's script) and may import from any room, so its imports are left out.
    """
    out = []
    tree = ast.parse(path.read_text())
    entry_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    skipped = {id(n) for block in entry_blocks for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; the rooms are checked on absolute ones"
            out.append((node.module or "", [alias.name for alias in node.names]))
    return [(m, names) for m, names in out if room_of(m) is not None]


@pytest.mark.parametrize("module, path", modules(), ids=[m for m, _ in modules()])
def test_no_arrow_points_upward_and_no_private_name_crosses_a_room(module: str, path: Path) -> None:
    here = room_of(module)
    assert here is not None, f"{module} is in no room; add it to ROOMS"
    for target, names in imports(path):
        for name in names or [target.rsplit(".", 1)[-1]]:
            full = f"{target}.{name}" if names and room_of(f"{target}.{name}") != room_of(target) else target
            there = room_of(full)
            assert ORDER[there] <= ORDER[here], f"{module} ({here}) imports {full} ({there}), a room above it"
            if there != here:
                assert not name.startswith("_"), f"{module} imports the private name {name} from {target} ({there})"


def test_every_room_is_documented() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, _ in ROOMS:
        assert f"`{name}`" in doc, f"docs/architecture.md does not describe the room {name}"
