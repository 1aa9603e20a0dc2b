"""`accelopt recipes`: list, show, validate and start recipes; list the steps a recipe can use."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from accelopt.cli.console import out, print_json, table
from accelopt.errors import BadInputError
from accelopt.recipes.schema import builtin_names, builtin_path, dump_yaml, load_recipe, passes_markdown, passes_table
from accelopt.recipes.starter import starter_recipe

app = typer.Typer(help="Built-in recipes, recipe validation, and the steps a recipe can use.", no_args_is_help=True)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The built-in recipes, with their one-line description and steps."""
    rows = []
    for name in builtin_names():
        r = load_recipe(name)
        rows.append({"name": name, "target": r.target.name, "steps": [s.name for s in r.steps],
                     "description": r.description})
    if as_json:
        print_json(rows)
    else:
        out.print(table("built-in recipes", ["name", "target", "steps", "description"],
                        ([r["name"], r["target"], " -> ".join(r["steps"]), r["description"]] for r in rows)))


@app.command("show")
def show(name: str = typer.Argument(..., help="A built-in recipe name."),
         resolved: bool = typer.Option(False, "--resolved", help="Show it with every default filled in."),
         as_json: bool = typer.Option(False, "--json", help="The resolved recipe as JSON.")) -> None:
    """Print a built-in recipe (its commented YAML, or the resolved form)."""
    if as_json:
        print_json(load_recipe(name).to_yaml_dict())
        return
    text = dump_yaml(load_recipe(name)) if resolved else builtin_path(name).read_text()
    out.print(text, end="", markup=False)


@app.command("validate")
def validate(path: Path = typer.Argument(..., help="A recipe YAML file."),
             overrides: list[str] = typer.Option([], "--set", help="Overrides to validate with it."),
             as_json: bool = typer.Option(False, "--json", help="Print the resolved recipe as JSON when valid.")) -> None:
    """Check a recipe without running it: unknown keys, bad values and unknown steps fail here (exit 2)."""
    if not path.exists():
        raise BadInputError(f"recipe not found: {path}")
    r = load_recipe(str(path), overrides)
    if as_json:
        print_json({"valid": True, "path": str(path), "recipe": r.to_yaml_dict()})
        return
    out.print(f"ok: {path} (recipe {r.name!r}, {len(r.steps)} step(s): "
              f"{', '.join(s.name for s in r.steps) or 'none'}; target {r.target.name})", markup=False)


@app.command("steps")
def steps(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
          markdown: bool = typer.Option(False, "--markdown", help="The reference page (docs/steps.md).")) -> None:
    """Every step a recipe can use, with its config keys and defaults (read from the pass registry)."""
    rows = passes_table()
    if markdown:  # written as is: a terminal-width wrap would break the table rows
        sys.stdout.write(passes_markdown() + "\n")
        return
    if as_json:
        print_json(rows)
        return
    for r in rows:
        out.print(table(f"{r['name']} (v{r['version']}): {r['summary']}", ["key", "type", "default", "meaning"],
                        ([k, f["type"], repr(f["default"]), f["help"]] for k, f in r["config"].items())))


@app.command("init")
def init(target: str = typer.Option("onnxruntime", "--target", "-t", help="The target the recipe lowers to."),
         output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout (never overwrites)."),
         ) -> None:
    """Write a commented starter recipe for TARGET."""
    text = starter_recipe(target)
    if output is None:
        out.print(text, end="", markup=False)
        return
    if output.exists():
        raise BadInputError(f"{output} exists; choose another path or delete it first")
    output.write_text(text)
    out.print(f"wrote {output}; check it with: accelopt recipes validate {output}", markup=False)
