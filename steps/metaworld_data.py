"""``python -m steps.metaworld_data``: a stable entry point; the code lives in
``steps.sim.metaworld.demonstrations``."""

from steps.sim.metaworld.demonstrations import main

if __name__ == "__main__":
    main()
