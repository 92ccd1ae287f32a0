"""``ech0 base-model`` (= ``python -m ech0.base_model``): prepare the configured base model, say what it is.

    ech0 base-model                          # the tiny local Llama: built once, then found
    ech0 base-model model=mistral-7b         # a hub id: resolved through the HF cache
    ech0 base-model --force                  # rebuild a local recipe

Prints the folder, the parameter count and one greedy answer, so a user sees the model works
before training on it. Options are the training config's ``model.*`` keys (conf/model/*.yaml).
"""

from __future__ import annotations

import sys

from ech0.errors import cli_errors

PROBE = "What color is the sky?"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    force = "--force" in argv
    from ech0.config import compose_or_exit

    cfg = compose_or_exit("train", [a for a in argv if a != "--force"])
    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.generation import generate
    from ech0.models import load_model, load_tokenizer, resolve_config

    quiet_libraries()
    ctx = Context.from_config(cfg)
    if force and cfg.model.name_or_path.startswith("local:"):
        from ech0.models.tiny import TinyRecipe, build

        build(TinyRecipe(name=cfg.model.name_or_path[len("local:"):], **cfg.model.recipe), ctx.base_models, force=True)
    path = resolve_config(cfg.model, ctx.base_models)
    model, tok = load_model(path, dtype=cfg.model.dtype), load_tokenizer(path)
    answer = generate(model, tok, [PROBE], max_new_tokens=24)[0]
    print(f"  folder   {path}\n  params   {sum(p.numel() for p in model.parameters()):,}\n"
          f"  asked    {PROBE}\n  answer   {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
