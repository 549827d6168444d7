"""``python -m steps.promote``: a stable entry point; the code lives in ``steps.registry.promote``."""

from steps.registry.promote import main

if __name__ == "__main__":
    raise SystemExit(main())
