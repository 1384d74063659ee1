"""Pretrained learned optimizers shipped with lopt (``lopt.load("<name>")``).

Every ``*.lopt`` file here was produced by this project's own ``lopt meta-train``;
its model card (``<name>.md``) records the command that reproduces it.
"""
