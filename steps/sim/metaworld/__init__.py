"""Meta-World: the MT50 task table (``tasks``), one task with the lerobot/metaworld_mt50 camera
(``env``), the simulator interface (``sim``), and scripted-expert demonstrations written as a LeRobot v3.0
dataset (``demonstrations``)."""
