"""ManiSkill3 (SAPIEN) in its own venv: the task table (``tasks``), the venv and the Vulkan check (``venv``),
the simulator interface (``sim``, in the main process for its class-level facts, in a worker process of the
ManiSkill venv for episodes), ManiSkill itself (``backend``, that venv only), and motion-planned
demonstrations written as a LeRobot v3.0 dataset (``demonstrations``)."""
