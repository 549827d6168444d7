"""LIBERO (hf-libero, LeRobot's LIBERO package) with openpi's evaluation conventions: the four suites'
task table (``suites``), getting LIBERO importable and checking it can run (``runtime``), one task
(``env``), the simulator interface (``sim``), scripted demonstrations as LeRobot (``demonstrations``) and
the one-command install (``install``)."""
