"""ManiSkill3 (SAPIEN) in its own venv: the task table (``tasks``), the venv and the Vulkan check (``venv``),
the worker subprocess that owns the simulator (``worker``, over ``protocol``), its client in the main
process (``env``), and motion-planned demonstrations written as a LeRobot v3.0 dataset (``demonstrations``)."""
